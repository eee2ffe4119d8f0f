"""The checkout saga with the real catalog, inventory and cart on a real nats-server, and a stand-in for payments.

The stand-in answers payments' subjects the way the payments service does and lets a test publish
the payment events a verified webhook would cause, in any order, as often as it likes. The
payments service itself, against localstripe, is tested in ``test_payments.py``; the whole
chain over HTTP in ``tests/e2e/test_checkout_http.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from cartwheel import subjects
from cartwheel.bus import encode, request
from cartwheel.contracts.base import Message, utcnow
from cartwheel.contracts.cart import AddToCart, GetCart
from cartwheel.contracts.catalog import ProductPatch, UpdateProduct
from cartwheel.contracts.inventory import CommitReservation, GetStock, SetStock
from cartwheel.contracts.orders import CancelOrder, Checkout, CheckoutItem, GetOrder, ListOrders, PayOrder
from cartwheel.contracts.payments import (
    CheckoutExpired,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentFailed,
    PaymentIntentCreated,
    PaymentNotStarted,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentSucceeded,
)
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes.client import LaneClient
from cartwheel.requests import failure
from services.orders import retries, sweeper
from tests.integration.conftest import Client
from tests.integration.test_cart_service import product

TIMEOUT = 15.0


class FakePayments:
    """Answers ``payments.*`` requests from its own thread; records what it was asked."""

    def __init__(self, nats_url: str) -> None:
        self.url = nats_url
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.before_intent_reply: Callable[[dict[str, Any]], Awaitable[None]] | None = None  # on the fake's loop
        self.hold_intents = threading.Event()  # set: CreateIntent never answers (a crash test)
        self.queue_intents = False  # True: CreateIntent answers "queued" (Stripe's rate limit is fully used)
        self.page_paid = False  # True: a checkout page asked to close was paid meanwhile
        self.page_close_refusal: str | None = None  # a refusal code every page close answers with
        self.confirm_status = "succeeded"
        self.received: tuple[int, str] | None = None  # what a succeeded confirm says it took in (None: the total)
        self.cancel_status = "canceled"  # "succeeded": the buyer paid just before the cancel reached Stripe
        self.cancel_refusal: str | None = None  # a refusal code every cancel answers with (not_found: no such intent)
        self.refund_status = "succeeded"  # what Stripe says of the refund it made
        self.hold_refunds = threading.Event()  # set: a refund request is never answered (payments unreachable)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.nc: nats.NATS | None = None

    def start(self) -> FakePayments:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._subscribe(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.nc:
            asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def asked(self, subject: str) -> list[dict[str, Any]]:
        return [body for s, body in self.calls if s == subject]

    def publish(self, event: Message) -> None:
        async def send() -> None:
            assert self.nc is not None
            await self.nc.jetstream().publish(event.subject, event.model_dump_json().encode())  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(send(), self.loop).result(10)

    async def _subscribe(self) -> None:
        self.nc = await nats.connect(self.url)
        for subject in (
            subjects.PAYMENTS_INTENT_CREATE,
            subjects.PAYMENTS_INTENT_CONFIRM,
            subjects.PAYMENTS_INTENT_CANCEL,
            subjects.PAYMENTS_REFUND,
            subjects.PAYMENTS_CHECKOUT_CREATE,
            subjects.PAYMENTS_CHECKOUT_EXPIRE,
        ):
            await self.nc.subscribe(subject, queue="payments", cb=self._answer)

    async def _answer(self, msg: Any) -> None:
        import json

        body = json.loads(msg.data)
        self.calls.append((msg.subject, body))
        order_id = body["order_id"]
        intent = {"payment_intent_id": f"pi_{order_id}", "client_secret": f"pi_{order_id}_secret_x",
                  "status": "requires_payment_method", "amount_cents": body.get("amount_cents", 0),
                  "currency": body.get("currency", "EUR"), "last_error": None}
        if msg.subject == subjects.PAYMENTS_CHECKOUT_EXPIRE and self.page_close_refusal:
            await msg.respond(failure(self.page_close_refusal, "Stripe could not close the checkout page now"))
            return
        if msg.subject in (subjects.PAYMENTS_CHECKOUT_CREATE, subjects.PAYMENTS_CHECKOUT_EXPIRE):
            closed = "complete" if self.page_paid else "expired"
            page = {"checkout_session_id": f"cs_{order_id}", "url": f"http://pay.test/c/pay/cs_{order_id}",
                    "status": "open" if msg.subject == subjects.PAYMENTS_CHECKOUT_CREATE else closed,
                    "payment_status": "paid" if self.page_paid else "unpaid",
                    "expires_at": body.get("expires_at", "2030-01-01T00:00:00Z"),
                    "payment_intent_id": f"pi_{order_id}" if self.page_paid else None}
            await msg.respond(encode({"ok": True, "data": page}))
            return
        if msg.subject == subjects.PAYMENTS_INTENT_CREATE:
            if self.hold_intents.is_set():
                return  # never answers: the orders service is killed meanwhile
            if self.before_intent_reply:
                await self.before_intent_reply(body)
            if self.queue_intents:
                await msg.respond(encode({"ok": True, "data": {"queued": True, "order_id": order_id}}))
                return
        elif msg.subject == subjects.PAYMENTS_INTENT_CONFIRM:
            intent["status"] = self.confirm_status
            if self.confirm_status == "requires_payment_method":
                intent["last_error"] = "Your card was declined."
            if self.confirm_status == "succeeded" and self.received:
                intent["amount_received_cents"], intent["currency_received"] = self.received
        elif msg.subject == subjects.PAYMENTS_REFUND:
            if self.hold_refunds.is_set():
                return
            await msg.respond(encode({"ok": True, "data": {"refund_id": f"re_{order_id}", "status": self.refund_status,
                                                           "amount_cents": 0}}))
            return
        elif msg.subject == subjects.PAYMENTS_INTENT_CANCEL:
            if self.cancel_refusal:
                await msg.respond(failure(self.cancel_refusal, "Stripe has no such object (cancel the payment)"))
                return
            intent["status"] = self.cancel_status
        await msg.respond(encode({"ok": True, "data": intent}))


@pytest.fixture
def payments(nats_url: str) -> Iterator[FakePayments]:
    fake = FakePayments(nats_url).start()
    yield fake
    fake.stop()


@pytest.fixture
def backends(start_service, client: Client) -> None:
    async def fresh_lanes(nc: nats.NATS) -> None:
        js = nc.jetstream()
        for lane in ("cart", "inventory"):
            lane_stream, lane_bucket = subjects.lane_stream(lane), subjects.lane_bucket(lane)
            for remove in (js.delete_stream(lane_stream), js.delete_key_value(lane_bucket)):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await remove

    client.run(fresh_lanes)
    start_service("catalog")
    start_service("inventory")
    start_service("cart")


@pytest.fixture
def orders(backends: None, payments: FakePayments, database_url: str, start_service):
    return start_service("orders", orders_database_url=database_url, reservation_ttl_seconds=60)


def ask(client: Client, message: Message) -> Any:
    return client.run(lambda nc: request(nc, message, TIMEOUT))


def refused(client: Client, message: Message) -> DomainError:
    with pytest.raises(DomainError) as caught:
        ask(client, message)
    return caught.value


def stock(client: Client, product_id: str) -> tuple[int, int]:
    level = ask(client, GetStock(product_id=product_id))
    return level["on_hand"], level["reserved"]


def new_product(client: Client, units: int, **fields: Any) -> str:
    return client.run(lambda nc: product(nc, stock=units, **fields))["id"]


def buy(product_id: str, quantity: int = 1, **fields: Any) -> Checkout:
    return Checkout(items=[CheckoutItem(product_id=product_id, quantity=quantity)], **fields)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def status_of(client: Client, order_id: str) -> str:
    return ask(client, GetOrder(order_id=order_id))["status"]


def paid_event(order: dict[str, Any], n: int = 1) -> PaymentSucceeded:
    return PaymentSucceeded(order_id=order["order_id"], payment_intent_id=f"pi_{order['order_id']}",
                            stripe_event_id=f"evt_{n}", amount_cents=order["total_cents"], currency=order["currency"])


def refunded_event(order: dict[str, Any], cents: int, n: int = 1) -> PaymentRefunded:
    """Stripe refunded ``cents`` of the order's payment in all so far."""
    return PaymentRefunded(order_id=order["order_id"], payment_intent_id=f"pi_{order['order_id']}",
                           stripe_event_id=f"evt_r{n}", amount_cents=order["total_cents"],
                           currency=order["currency"], amount_refunded_cents=cents)


def paid_orders(client: Client, payments: FakePayments, product_id: str, *quantities: int) -> list[dict[str, Any]]:
    """Buy-now orders of ``product_id``, one per quantity, each paid (its success heard) before this returns."""
    orders = [ask(client, buy(product_id, quantity)) for quantity in quantities]
    for n, order in enumerate(orders):
        payments.publish(paid_event(order, 100 + n))
        wait_for(lambda order=order: status_of(client, order["order_id"]) == "paid", "paid")
    return orders


# -- the happy path ----------------------------------------------------------------------------


def test_a_cart_checks_out_reserves_and_on_payment_commits_and_closes_the_cart(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug, plate = new_product(client, 5), new_product(client, 3, price_cents=800)
    ask(client, AddToCart(cart_id="cart-saga-1", product_id=mug, quantity=2))
    ask(client, AddToCart(cart_id="cart-saga-1", product_id=plate, quantity=1))
    order = ask(client, Checkout(cart_id="cart-saga-1", email="ada@example.com"))
    assert order["status"] == "awaiting_payment"
    assert order["total_cents"] == 2 * 1200 + 800 and order["currency"] == "EUR"
    assert order["payment"]["client_secret"] == f"pi_{order['order_id']}_secret_x"
    assert [h["status"] for h in order["history"]] == ["pending", "reserved", "awaiting_payment"]
    assert stock(client, mug) == (5, 2) and stock(client, plate) == (3, 1)
    (intent,) = payments.asked(subjects.PAYMENTS_INTENT_CREATE)
    assert (intent["amount_cents"], intent["currency"], intent["order_id"]) == (3200, "EUR", order["order_id"])

    payments.publish(paid_event(order))
    wait_for(lambda: status_of(client, order["order_id"]) == "paid", "the order paid")
    assert stock(client, mug) == (3, 0) and stock(client, plate) == (2, 0)
    wait_for(lambda: ask(client, GetCart(cart_id="cart-saga-1"))["status"] == "checked_out", "the cart closed")
    for n in range(2, 5):  # the same payment, heard again (webhook and confirmation, replays): nothing more
        payments.publish(paid_event(order, n))
    time.sleep(0.5)
    assert stock(client, mug) == (3, 0)
    assert [h["status"] for h in ask(client, GetOrder(order_id=order["order_id"]))["history"]][-1] == "paid"


def created_event(order: dict[str, Any], order_id: str | None = None) -> PaymentIntentCreated:
    """Payments made the order's queued intent."""
    order_id = order_id or order["order_id"]
    return PaymentIntentCreated(order_id=order_id, payment_intent_id=f"pi_{order_id}",
                                stripe_event_id=f"create:{order_id}", amount_cents=order["total_cents"],
                                currency=order["currency"], client_secret=f"pi_{order_id}_secret_q",
                                status="requires_payment_method")


def test_a_checkout_whose_intent_is_queued_answers_reserved_then_awaits_payment_when_it_is_made(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    payments.queue_intents = True
    order = ask(client, buy(mug, 2, email="ada@example.com"))
    assert order["status"] == "reserved" and stock(client, mug) == (5, 2)  # the stock is the buyer's already
    assert order["payment"] == {"provider": "stripe", "payment_intent_id": None, "client_secret": None,
                                "status": "queued", "last_error": None, "checkout_session_id": None,
                                "checkout_url": None}
    assert [h["status"] for h in order["history"]] == ["pending", "reserved"]
    too_soon = refused(client, PayOrder(order_id=order["order_id"], payment_method="pm_card_visa"))
    assert too_soon.code == "payment_not_ready"
    for _ in range(2):  # heard twice: attached once
        payments.publish(created_event(order))
    wait_for(lambda: status_of(client, order["order_id"]) == "awaiting_payment", "the order awaits payment")
    now = ask(client, GetOrder(order_id=order["order_id"]))
    assert now["payment"]["client_secret"] == f"pi_{order['order_id']}_secret_q"
    assert [h["status"] for h in now["history"]] == ["pending", "reserved", "awaiting_payment"]
    payments.publish(paid_event(order))
    wait_for(lambda: status_of(client, order["order_id"]) == "paid", "the order paid")
    assert stock(client, mug) == (3, 0)


def test_an_order_waiting_for_its_queued_intent_is_not_asked_again_by_the_sweeper_or_a_retry(
    payments: FakePayments, backends: None, database_url: str, start_service, client: Client
) -> None:
    start_service("orders", orders_database_url=database_url, reservation_ttl_seconds=60,
                  checkout_resume_seconds=0.5)
    mug = new_product(client, 5)
    payments.queue_intents = True
    order = ask(client, buy(mug, 1, cart_id=None, idempotency_key="queued-once", visitor_id="visitor-queued"))
    assert order["status"] == "reserved"
    again = ask(client, buy(mug, 1, cart_id=None, idempotency_key="queued-once", visitor_id="visitor-queued"))
    assert again["order_id"] == order["order_id"]  # the buyer's retry: the same order, nothing asked again
    time.sleep(3)  # six times the resume age: a crashed checkout would have been resumed by now
    assert len(payments.asked(subjects.PAYMENTS_INTENT_CREATE)) == 1
    assert status_of(client, order["order_id"]) == "reserved"


def test_a_queued_intent_refused_for_good_cancels_its_order_and_one_made_too_late_is_cancelled(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    payments.queue_intents = True
    refused_order, late_order = ask(client, buy(mug, 1)), ask(client, buy(mug, 2))
    payments.publish(PaymentNotStarted(order_id=refused_order["order_id"], reason="Stripe refused the currency"))
    wait_for(lambda: status_of(client, refused_order["order_id"]) == "cancelled", "the refused order cancelled")
    ask(client, CancelOrder(order_id=late_order["order_id"], reason="the buyer changed their mind"))
    assert stock(client, mug) == (5, 0)
    payments.publish(created_event(late_order))  # made after its order ended: nobody may pay it
    wait_for(lambda: payments.asked(subjects.PAYMENTS_INTENT_CANCEL), "the late intent cancelled")
    (cancel,) = payments.asked(subjects.PAYMENTS_INTENT_CANCEL)
    assert (cancel["order_id"], cancel["payment_intent_id"]) == (late_order["order_id"], f"pi_{late_order['order_id']}")
    assert status_of(client, late_order["order_id"]) == "cancelled"


def hosted(product_id: str, quantity: int = 1) -> Checkout:
    return buy(product_id, quantity, email="ada@example.com", mode="hosted",
               return_url="http://shop.test/orders/{ORDER_ID}")


def test_a_hosted_checkout_holds_stock_while_its_page_is_open_and_is_paid_there(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    order = ask(client, hosted(mug, 2))
    order_id = order["order_id"]
    assert order["status"] == "awaiting_payment" and stock(client, mug) == (5, 2)
    assert order["payment"]["checkout_url"] == f"http://pay.test/c/pay/cs_{order_id}"
    assert order["payment"]["checkout_session_id"] == f"cs_{order_id}" and order["payment"]["client_secret"] is None
    assert order["history"][-1]["reason"] == "checkout page opened"
    (page,) = payments.asked(subjects.PAYMENTS_CHECKOUT_CREATE)
    assert page["success_url"] == f"http://shop.test/orders/{order_id}?checkout=done"
    assert page["cancel_url"] == f"http://shop.test/orders/{order_id}?checkout=cancelled"
    assert page["lines"] == [{"name": page["lines"][0]["name"], "quantity": 2, "unit_amount_cents": 1200}]
    created, reserved_until = (datetime.fromisoformat(order[k]) for k in ("created_at", "reserved_until"))
    closes = datetime.fromisoformat(page["expires_at"].replace("Z", "+00:00"))
    assert reserved_until - created >= timedelta(minutes=32)  # Stripe keeps a page open 30 minutes at least
    assert reserved_until - closes == timedelta(seconds=60)  # the page closes first: a payment finds its stock
    assert refused(client, PayOrder(order_id=order_id, payment_method="pm_card_visa")).code == "conflict"
    payments.publish(paid_event(order))  # what payments announces after checkout.session.completed
    wait_for(lambda: status_of(client, order_id) == "paid", "the order paid")
    assert stock(client, mug) == (3, 0)
    assert ask(client, GetOrder(order_id=order_id))["payment"]["checkout_url"] is None  # nothing more to pay there


def test_a_hosted_checkout_whose_page_closed_unpaid_expires_and_one_cancelled_closes_its_page(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    abandoned, cancelled = ask(client, hosted(mug, 1)), ask(client, hosted(mug, 2))
    closed = CheckoutExpired(order_id=abandoned["order_id"], checkout_session_id=f"cs_{abandoned['order_id']}")
    payments.publish(closed)
    wait_for(lambda: status_of(client, abandoned["order_id"]) == "expired", "the abandoned order expired")
    assert not payments.asked(subjects.PAYMENTS_CHECKOUT_EXPIRE)  # Stripe closed that page itself
    ask(client, CancelOrder(order_id=cancelled["order_id"], reason="the buyer changed their mind"))
    (close,) = payments.asked(subjects.PAYMENTS_CHECKOUT_EXPIRE)
    assert close["checkout_session_id"] == f"cs_{cancelled['order_id']}"
    assert status_of(client, cancelled["order_id"]) == "cancelled" and stock(client, mug) == (5, 0)


def test_a_page_that_could_not_be_closed_when_its_order_was_cancelled_is_closed_by_the_sweeper(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    order = ask(client, hosted(mug, 1))
    payments.page_close_refusal = "payment_provider_unavailable"
    cancelled = ask(client, CancelOrder(order_id=order["order_id"], reason="the buyer changed their mind"))
    assert cancelled["status"] == "cancelled" and cancelled["payment"]["status"] == "cancel_pending"
    assert stock(client, mug) == (5, 0)
    payments.page_close_refusal = None  # payments answers again: the sweeper closes the page
    wait_for(lambda: ask(client, GetOrder(order_id=order["order_id"]))["payment"]["status"] == "expired",
             "the page closed by the sweeper", timeout=20)
    assert len(payments.asked(subjects.PAYMENTS_CHECKOUT_EXPIRE)) >= 2


def test_an_order_whose_page_was_paid_as_it_was_closed_keeps_its_stock_for_the_payment(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    order = ask(client, hosted(mug, 1))
    payments.page_paid = True
    ask(client, CancelOrder(order_id=order["order_id"], reason="too late: the buyer paid"))
    assert status_of(client, order["order_id"]) == "awaiting_payment" and stock(client, mug) == (5, 1)
    payments.publish(paid_event(order))
    wait_for(lambda: status_of(client, order["order_id"]) == "paid", "the order paid")


def test_paying_through_the_order_confirms_and_a_decline_keeps_the_stock_for_another_card(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 4)
    order = ask(client, buy(mug, 2))
    payments.confirm_status = "requires_payment_method"
    declined = ask(client, PayOrder(order_id=order["order_id"], payment_method="pm_card_chargeCustomerFail"))
    assert declined["status"] == "payment_failed" and declined["payment"]["last_error"] == "Your card was declined."
    assert stock(client, mug) == (4, 2)  # still held: released before, and sold to someone else meanwhile
    payments.confirm_status = "succeeded"  # another card on the same intent: paid, its reservation committed
    paid = ask(client, PayOrder(order_id=order["order_id"], payment_method="pm_card_visa"))
    assert paid["status"] == "paid"
    assert [h["reason"] for h in paid["history"]][-1] == "paid"  # not "paid after its reservation ended"
    assert stock(client, mug) == (2, 0)


def test_a_product_named_by_its_sku_is_bought_under_its_id(orders: Any, client: Client) -> None:
    mug = client.run(lambda nc: product(nc, stock=5))
    order = ask(client, Checkout(items=[CheckoutItem(product_id=mug["sku"], quantity=2),
                                        CheckoutItem(product_id=mug["id"], quantity=1)]))  # 500 before: a KeyError
    assert [(line["product_id"], line["quantity"]) for line in order["lines"]] == [(mug["id"], 3)]
    assert stock(client, mug["id"]) == (5, 3)


def test_a_payment_that_took_in_another_amount_or_currency_puts_the_order_aside_for_review(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 4)
    order = ask(client, buy(mug, 2))
    wrong = paid_event(order).model_copy(update={"amount_received_cents": 1, "currency_received": "JPY"})
    payments.publish(wrong)
    # Before, the order was paid and its units committed: 1 yen for 2,400 cents.
    wait_for(lambda: status_of(client, order["order_id"]) == "needs_review", "the order put aside")
    found = ask(client, GetOrder(order_id=order["order_id"]))
    assert found["history"][-1]["reason"] == "the payment took in 1 JPY for an order of 2400 EUR"
    assert stock(client, mug) == (4, 2)  # nothing committed
    payments.publish(paid_event(order, 2))  # a matching success later can't settle it: a person decides
    time.sleep(0.5)
    assert status_of(client, order["order_id"]) == "needs_review"
    assert ask(client, CancelOrder(order_id=order["order_id"]))["status"] == "refunded"
    assert stock(client, mug) == (4, 0)
    assert [r["order_id"] for r in payments.asked(subjects.PAYMENTS_REFUND)] == [order["order_id"]]
    payments.received = (5, "EUR")  # paid through the shop (pay): the answer is checked as an event is
    answered = ask(client, buy(mug, 1))
    paid = ask(client, PayOrder(order_id=answered["order_id"], payment_method="pm_card_visa"))
    assert paid["status"] == "needs_review" and stock(client, mug) == (4, 1)
    matching = ask(client, buy(mug, 1))
    payments.publish(paid_event(matching).model_copy(update={"amount_received_cents": 1200,
                                                               "currency_received": "eur"}))
    wait_for(lambda: status_of(client, matching["order_id"]) == "paid", "a matching payment pays")


def test_a_partial_refund_at_stripe_is_written_down_and_leaves_the_order_paid_and_its_stock_alone(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    (order,) = paid_orders(client, payments, mug, 2)  # 2,400 EUR cents
    payments.publish(refunded_event(order, 100, 1))
    wait_for(lambda: ask(client, GetOrder(order_id=order["order_id"]))["refunded_cents"] == 100, "100 refunded")
    found = ask(client, GetOrder(order_id=order["order_id"]))
    # Before: the order became refunded and both units went back on hand (stock overstated: oversold later).
    assert found["status"] == "paid"
    assert found["history"][-1] == {**found["history"][-1], "status": "paid",
                                    "reason": "partially refunded at the payment provider: 100 of 2400 EUR"}
    assert stock(client, mug) == (3, 0)
    payments.publish(refunded_event(order, 50, 2))  # older news (a cumulative total below what we know): nothing
    time.sleep(0.5)
    assert ask(client, GetOrder(order_id=order["order_id"]))["refunded_cents"] == 100
    cancelled = ask(client, CancelOrder(order_id=order["order_id"]))  # the admin refunds the rest
    assert (cancelled["status"], cancelled["refunded_cents"]) == ("refunded", 2400)
    assert [r["order_id"] for r in payments.asked(subjects.PAYMENTS_REFUND)] == [order["order_id"]]
    assert stock(client, mug) == (5, 0)


def test_a_chargeback_makes_a_paid_order_disputed_until_it_closes_won_or_lost(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    won, lost = paid_orders(client, payments, mug, 1, 1)

    def dispute(order: dict[str, Any], closed: str | None = None) -> PaymentDisputed | PaymentDisputeClosed:
        common = {"order_id": order["order_id"], "payment_intent_id": f"pi_{order['order_id']}",
                  "stripe_event_id": f"evt_d_{closed}", "amount_cents": 1200, "currency": "EUR", "dispute_id": "dp_1"}
        if closed is None:
            return PaymentDisputed(reason="fraudulent", amount_disputed_cents=1200, **common)
        return PaymentDisputeClosed(status=closed, won=closed == "won", **common)

    for order in (won, lost):
        payments.publish(dispute(order))
        payments.publish(dispute(order))  # heard twice: one line in the history
        wait_for(lambda order=order: status_of(client, order["order_id"]) == "disputed", "disputed")  # stayed paid
    refused(client, CancelOrder(order_id=won["order_id"]))  # no refund of a disputed payment
    payments.publish(paid_event(won, 7))  # the success heard again: it must not end the dispute
    time.sleep(0.5)
    assert status_of(client, won["order_id"]) == "disputed"
    payments.publish(dispute(won, "won"))
    payments.publish(dispute(lost, "lost"))
    wait_for(lambda: status_of(client, won["order_id"]) == "paid", "won: paid again")
    wait_for(lambda: status_of(client, lost["order_id"]) == "dispute_lost", "lost")
    history = [(h["status"], h["reason"]) for h in ask(client, GetOrder(order_id=won["order_id"]))["history"]]
    assert history[-2:] == [("disputed", "the buyer's bank disputes the payment (fraudulent)"),
                            ("paid", "the dispute closed: won")]
    assert stock(client, mug) == (3, 0)  # the units stay sold either way
    listed = ask(client, ListOrders(status="dispute_lost", limit=200))["items"]
    assert lost["order_id"] in [o["order_id"] for o in listed]
    (inquiry,) = paid_orders(client, payments, mug, 1)  # an inquiry, refunded at Stripe while it is open
    payments.publish(dispute(inquiry))
    wait_for(lambda: status_of(client, inquiry["order_id"]) == "disputed", "disputed")
    payments.publish(refunded_event(inquiry, 1200))
    wait_for(lambda: status_of(client, inquiry["order_id"]) == "refunded", "refunded during the inquiry")
    payments.publish(dispute(inquiry, "warning_closed"))  # the inquiry closes "won": the money went back anyway
    time.sleep(0.5)
    assert status_of(client, inquiry["order_id"]) == "refunded"


def test_a_cart_has_one_open_order_whatever_the_idempotency_key_and_a_changed_cart_replaces_it(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug, plate = new_product(client, 5), new_product(client, 5)
    ask(client, AddToCart(cart_id="cart-one-open", product_id=mug, quantity=2))

    async def clicks(nc: nats.NATS) -> list[dict[str, Any]]:  # "Place order" twice, each with its own key
        return await asyncio.gather(*(request(nc, Checkout(cart_id="cart-one-open", idempotency_key=f"click-{i}"),
                                              TIMEOUT) for i in range(2)))

    first, second = client.run(clicks)
    # Before: two orders, two intents, both payable: the buyer could be charged twice.
    assert first["order_id"] == second["order_id"]
    assert first["payment"]["client_secret"] == second["payment"]["client_secret"]
    again = ask(client, Checkout(cart_id="cart-one-open", idempotency_key="another-tab"))
    assert again["order_id"] == first["order_id"]
    assert len(payments.asked(subjects.PAYMENTS_INTENT_CREATE)) == 1 and stock(client, mug) == (5, 2)

    ask(client, AddToCart(cart_id="cart-one-open", product_id=plate, quantity=1))  # the cart changed
    changed = ask(client, Checkout(cart_id="cart-one-open", idempotency_key="after-the-change"))
    assert changed["order_id"] != first["order_id"]
    assert sorted((line["product_id"], line["quantity"]) for line in changed["lines"]) == sorted([(mug, 2),
                                                                                                 (plate, 1)])
    assert status_of(client, first["order_id"]) == "cancelled"  # its intent cancelled: it can't be paid
    assert [c["order_id"] for c in payments.asked(subjects.PAYMENTS_INTENT_CANCEL)] == [first["order_id"]]
    assert stock(client, mug) == (5, 2) and stock(client, plate) == (5, 1)


def test_two_orders_replicas_never_make_a_cart_two_open_orders(
    orders: Any, payments: FakePayments, database_url: str, start_service: Any, client: Client
) -> None:
    start_service("orders", orders_database_url=database_url, reservation_ttl_seconds=60)  # a second replica
    mug = new_product(client, 50)
    placed: set[str] = set()
    for n in range(5):
        cart = f"cart-replicas-{n}"
        ask(client, AddToCart(cart_id=cart, product_id=mug, quantity=1))

        async def clicks(nc: nats.NATS, cart: str = cart) -> list[dict[str, Any]]:
            return await asyncio.gather(*(request(nc, Checkout(cart_id=cart, idempotency_key=f"k-{i}"), TIMEOUT)
                                          for i in range(4)))

        orders_of_cart = {answer["order_id"] for answer in client.run(clicks)}
        assert len(orders_of_cart) == 1, orders_of_cart  # the unique index decides across replicas
        placed |= orders_of_cart
    assert stock(client, mug) == (50, 5)


def test_a_refund_that_fails_puts_the_order_aside_instead_of_calling_it_refunded(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    (order,) = paid_orders(client, payments, mug, 2)
    payments.refund_status = "failed"  # e.g. the card was closed: Stripe takes the refund, then fails it
    found = ask(client, CancelOrder(order_id=order["order_id"]))
    # Before: "refunded", its units back on hand, while the buyer never got the money.
    assert (found["status"], found["payment"]["status"]) == ("needs_review", "refund_failed")
    assert stock(client, mug) == (3, 0)
    payments.refund_status = "succeeded"
    (late,) = paid_orders(client, payments, mug, 1)
    payments.publish(refunded_event(late, 1200))
    wait_for(lambda: status_of(client, late["order_id"]) == "refunded", "refunded at Stripe")
    payments.publish(PaymentRefundFailed(order_id=late["order_id"], payment_intent_id=f"pi_{late['order_id']}",
                                         stripe_event_id="evt_rf", amount_cents=1200, currency="EUR",
                                         refund_id="re_1", amount_not_refunded_cents=1200,
                                         reason="expired_or_canceled_card"))
    wait_for(lambda: status_of(client, late["order_id"]) == "needs_review", "the refund failed after all")
    assert ask(client, GetOrder(order_id=late["order_id"]))["refunded_cents"] == 0


def test_a_refund_heard_before_its_payments_success_still_refunds_the_order(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    order = ask(client, buy(mug, 2))
    payments.publish(refunded_event(order, 2400))  # its own consumer got to it first
    time.sleep(0.3)
    payments.publish(paid_event(order))
    # Before: the refund was dropped (an awaiting order can't be refunded), then the success made it paid:
    # its units sold, its money back with the buyer.
    wait_for(lambda: status_of(client, order["order_id"]) == "refunded", "refunded after its success")
    assert stock(client, mug) == (5, 0)


def test_whether_a_refunded_order_puts_its_units_back_is_the_admins_choice(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    kept, shipped = paid_orders(client, payments, mug, 1, 2)
    assert stock(client, mug) == (2, 0)
    assert ask(client, CancelOrder(order_id=kept["order_id"]))["status"] == "refunded"
    assert stock(client, mug) == (3, 0)  # back on hand
    assert ask(client, CancelOrder(order_id=shipped["order_id"], restock=False))["status"] == "refunded"
    assert stock(client, mug) == (3, 0)  # shipped: refunded, not restocked (before: always restocked)


def test_a_refund_left_half_way_is_finished_by_the_sweeper(
    backends: None, payments: FakePayments, database_url: str, start_service: Any, client: Client
) -> None:
    start_service("orders", orders_database_url=database_url, checkout_resume_seconds=1, request_timeout=1.0)
    mug = new_product(client, 5)
    (order,) = paid_orders(client, payments, mug, 2)
    payments.hold_refunds.set()  # payments does not answer: the admin's cancel fails half-way
    with pytest.raises((DomainError, ServiceUnavailable)):
        ask(client, CancelOrder(order_id=order["order_id"]))
    assert ask(client, GetOrder(order_id=order["order_id"]))["payment"]["status"] == "refunding"
    payments.hold_refunds.clear()
    # Before: left "paid" and "refunding" for ever (only a payment heard again would finish it).
    wait_for(lambda: status_of(client, order["order_id"]) == "refunded", "refunded by the sweeper")
    assert stock(client, mug) == (5, 0)


# -- refusals ----------------------------------------------------------------------------------


def test_a_short_line_refuses_the_whole_order_and_holds_nothing(orders: Any, client: Client) -> None:
    mug, plate = new_product(client, 5), new_product(client, 1)
    error = refused(client, Checkout(items=[CheckoutItem(product_id=mug, quantity=2),
                                            CheckoutItem(product_id=plate, quantity=3)]))
    assert error.code == "out_of_stock"
    assert error.details["lines"] == [{"product_id": plate, "requested": 3, "available": 1}]
    assert stock(client, mug) == (5, 0) and stock(client, plate) == (1, 0)


def test_a_price_change_since_adding_is_refused_unless_accepted(orders: Any, client: Client) -> None:
    mug = new_product(client, 5)
    ask(client, AddToCart(cart_id="cart-saga-price", product_id=mug, quantity=1))
    ask(client, UpdateProduct(product_id=mug, patch=ProductPatch(price_cents=1500)))
    error = refused(client, Checkout(cart_id="cart-saga-price"))
    assert error.code == "price_changed"
    (change,) = error.details["changes"]
    assert (change["product_id"], change["old_unit_price_cents"], change["new_unit_price_cents"]) == (mug, 1200, 1500)
    assert stock(client, mug) == (5, 0)
    order = ask(client, Checkout(cart_id="cart-saga-price", accept_price_changes=True))
    assert order["total_cents"] == 1500


def test_a_checkout_whose_catalog_copy_lost_its_watch_still_refuses_a_product_deactivated_since(
    orders: Any, client: Client
) -> None:
    """Orders' copy of the catalog bucket lost its watch on the server (as after a server restart) and,
    until it notices, hears no change. A checkout must still see the product as the bucket has it when
    the checkout begins: a copy is read only once it holds that, else the catalog is asked."""
    kettle = new_product(client, 5)
    ask(client, buy(kettle))  # the product is in orders' copy

    async def lose_the_watches(nc: nats.NATS) -> None:
        js, stream = nc.jetstream(), f"KV_{subjects.CATALOG_CACHE_BUCKET}"
        for consumer in await js.consumers_info(stream):  # every watch of the bucket, orders' among them
            with contextlib.suppress(nats.js.errors.NotFoundError):  # gone meanwhile (an ordered consumer resets)
                await js.delete_consumer(stream, consumer.name)

    client.run(lose_the_watches)
    ask(client, UpdateProduct(product_id=kettle, patch=ProductPatch(active=False)))
    assert refused(client, buy(kettle)).code == "not_for_sale"
    assert stock(client, kettle) == (5, 1)


def test_an_empty_or_unknown_cart_is_refused(orders: Any, client: Client) -> None:
    assert refused(client, Checkout(cart_id="cart-never-used")).code == "empty_cart"
    assert refused(client, Checkout()).code == "empty_cart"
    assert refused(client, buy("0b7e4c1e-2f5d-4a3b-9c8d-1e2f3a4b5c6d")).code == "not_found"


def test_fifty_buyers_for_the_last_unit_make_one_paid_order(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    last = new_product(client, 1)

    async def rush(nc: nats.NATS) -> list[Any]:
        async def one(i: int) -> Any:
            try:
                return await request(nc, buy(last, 1, email=f"buyer{i}@example.com"), TIMEOUT)
            except DomainError as error:
                return error.code

        return await asyncio.gather(*(one(i) for i in range(50)))

    outcomes = client.run(rush)
    winners = [o for o in outcomes if isinstance(o, dict)]
    assert len(winners) == 1 and outcomes.count("out_of_stock") == 49
    # A refusal writes nothing: the only order of this product is the winner's (no cancelled ones),
    # and no intent was asked for a refused checkout.
    listed = ask(client, ListOrders(limit=200))["items"]
    assert [o["order_id"] for o in listed if o["lines"][0]["product_id"] == last] == [winners[0]["order_id"]]
    assert [a["order_id"] for a in payments.asked(subjects.PAYMENTS_INTENT_CREATE)] == [winners[0]["order_id"]]
    payments.publish(paid_event(winners[0]))
    wait_for(lambda: status_of(client, winners[0]["order_id"]) == "paid", "the winner paid")
    assert stock(client, last) == (0, 0)


# -- idempotency -------------------------------------------------------------------------------


def test_an_idempotency_key_returns_the_same_order(orders: Any, payments: FakePayments, client: Client) -> None:
    mug = new_product(client, 10)
    first = ask(client, buy(mug, 1, user_id="u-1", idempotency_key="key-1"))

    async def retries(nc: nats.NATS) -> list[Any]:
        return await asyncio.gather(*(request(nc, buy(mug, 1, user_id="u-1", idempotency_key="key-1"), TIMEOUT)
                                      for _ in range(5)))

    assert {o["order_id"] for o in client.run(retries)} == {first["order_id"]}
    other_buyer = ask(client, buy(mug, 1, user_id="u-2", idempotency_key="key-1"))
    assert other_buyer["order_id"] != first["order_id"]
    assert stock(client, mug) == (10, 2)
    assert len(payments.asked(subjects.PAYMENTS_INTENT_CREATE)) == 2


def test_a_retry_with_the_same_key_while_the_first_is_at_work_gets_the_same_order(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    last = new_product(client, 1)  # a second checkout of its own would be refused

    async def slow_intent(body: dict[str, Any]) -> None:
        await asyncio.sleep(1.5)

    payments.before_intent_reply = slow_intent
    wanted = buy(last, 1, user_id="u-retry", idempotency_key="retry-while-at-work")

    async def gateway_gives_up_then_retries(nc: nats.NATS) -> Any:
        with contextlib.suppress(ServiceUnavailable):
            await request(nc, wanted, 0.3)
        return await request(nc, wanted, TIMEOUT)

    order = client.run(gateway_gives_up_then_retries)
    assert order["status"] == "awaiting_payment"
    assert [a["order_id"] for a in payments.asked(subjects.PAYMENTS_INTENT_CREATE)] == [order["order_id"]]
    assert stock(client, last) == (1, 1)


def test_a_payment_heard_before_the_checkout_reply_still_ends_paid(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 3)

    async def webhook_first(body: dict[str, Any]) -> None:
        event = PaymentSucceeded(order_id=body["order_id"], payment_intent_id=f"pi_{body['order_id']}",
                                 stripe_event_id="evt_early", amount_cents=body["amount_cents"], currency="EUR")
        assert payments.nc is not None
        await payments.nc.jetstream().publish(event.subject, event.model_dump_json().encode())
        await asyncio.sleep(1.0)  # the event is handled while the intent's reply is on its way

    payments.before_intent_reply = webhook_first
    order = ask(client, buy(mug, 2))
    final = wait_for(lambda: (o := ask(client, GetOrder(order_id=order["order_id"])))["status"] == "paid" and o,
                     "the order paid")
    assert final["payment"]["payment_intent_id"] == f"pi_{order['order_id']}"
    assert stock(client, mug) == (1, 0)


# -- expiry and late payments -------------------------------------------------------------------


@pytest.fixture
def short_orders(backends: None, payments: FakePayments, database_url: str, start_service):
    return start_service("orders", orders_database_url=database_url, reservation_ttl_seconds=1)


def test_an_unpaid_order_expires_releases_and_cancels_its_intent(
    short_orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 2)
    order = ask(client, buy(mug, 2))
    wait_for(lambda: status_of(client, order["order_id"]) == "expired", "the order expired")
    assert stock(client, mug) == (2, 0)
    wait_for(lambda: payments.asked(subjects.PAYMENTS_INTENT_CANCEL), "the intent cancelled")


def test_a_cart_checked_out_again_with_the_same_key_after_its_order_expired_gets_a_new_order(
    short_orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 2)
    ask(client, AddToCart(cart_id="cart-again", product_id=mug, quantity=1))
    key = "cart-cart-again-v1"  # the storefront's key: one per cart version, and the cart did not change
    first = ask(client, Checkout(cart_id="cart-again", idempotency_key=key))
    wait_for(lambda: status_of(client, first["order_id"]) == "expired", "the order expired")
    second = ask(client, Checkout(cart_id="cart-again", idempotency_key=key))
    # Before: the expired order again, for ever (until the cart was edited).
    assert second["order_id"] != first["order_id"] and second["status"] == "awaiting_payment"


def test_a_payment_after_expiry_reserves_again_when_stock_allows(
    short_orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 2)
    order = ask(client, buy(mug, 2))
    wait_for(lambda: status_of(client, order["order_id"]) == "expired", "the order expired")
    payments.publish(paid_event(order))
    wait_for(lambda: status_of(client, order["order_id"]) == "paid", "paid after all")
    assert stock(client, mug) == (0, 0)
    assert payments.asked(subjects.PAYMENTS_REFUND) == []


def test_a_payment_after_expiry_is_refunded_when_the_stock_is_gone(
    short_orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 1)
    late = ask(client, buy(mug, 1))
    wait_for(lambda: status_of(client, late["order_id"]) == "expired", "the order expired")
    quick = ask(client, buy(mug, 1))
    payments.publish(paid_event(quick, 1))
    wait_for(lambda: status_of(client, quick["order_id"]) == "paid", "the second buyer paid")
    payments.publish(paid_event(late, 2))
    wait_for(lambda: status_of(client, late["order_id"]) == "refunded", "the late payment refunded")
    (refund,) = payments.asked(subjects.PAYMENTS_REFUND)
    assert refund["order_id"] == late["order_id"]
    assert stock(client, mug) == (0, 0)


def test_a_failed_payment_keeps_the_stock_until_the_reservation_ends_then_expires_and_cancels_its_intent(
    backends: None, payments: FakePayments, database_url: str, start_service: Any, client: Client
) -> None:
    start_service("orders", orders_database_url=database_url, reservation_ttl_seconds=3)
    mug = new_product(client, 3)
    order = ask(client, buy(mug, 3))
    payments.publish(PaymentFailed(order_id=order["order_id"], payment_intent_id=f"pi_{order['order_id']}",
                                   stripe_event_id="evt_f", amount_cents=order["total_cents"], currency="EUR",
                                   reason="insufficient funds"))
    wait_for(lambda: status_of(client, order["order_id"]) == "payment_failed", "payment failed")
    assert stock(client, mug) == (3, 3)  # released at once before: the buyer's next card found it sold
    assert payments.asked(subjects.PAYMENTS_INTENT_CANCEL) == []
    wait_for(lambda: status_of(client, order["order_id"]) == "expired", "expired with its reservation")
    assert stock(client, mug) == (3, 0)
    assert [c["order_id"] for c in payments.asked(subjects.PAYMENTS_INTENT_CANCEL)] == [order["order_id"]]
    history = [h["status"] for h in ask(client, GetOrder(order_id=order["order_id"]))["history"]]
    assert history[-2:] == ["payment_failed", "expired"]


def test_a_sweep_step_that_fails_for_good_backs_off_then_puts_the_order_aside_instead_of_trying_for_ever(
    short_orders: Any, payments: FakePayments, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service runs in this process: a sweep every 0.25 s while there is work (not every second), and a failing
    # step's wait doubling from 0.5 s to a cap of 1 s (not 2, 4, 8 ... s to 300 s): the same back-off, doubling
    # then capped, in a few seconds.
    monkeypatch.setattr(sweeper, "SWEEP_EVERY", 0.25)
    monkeypatch.setattr(retries, "BACKOFF_FIRST", 0.5)
    monkeypatch.setattr(retries, "BACKOFF_MAX", 1.0)
    mug = new_product(client, 2)
    payments.cancel_refusal = "not_found"  # the embedded payment server restarted empty: it has no such intent
    order = ask(client, buy(mug, 1))
    wait_for(lambda: status_of(client, order["order_id"]) == "expired", "expired, its intent not cancelled")
    assert stock(client, mug) == (2, 0)

    def cancels() -> int:
        return len(payments.asked(subjects.PAYMENTS_INTENT_CANCEL))

    # Before: tried again at every sweep (once a second), for ever, a warning each time.
    wait_for(lambda: status_of(client, order["order_id"]) == "needs_review", "put aside", timeout=30)
    tried = cancels()
    assert tried == 1 + retries.GIVE_UP  # the expiry's own try, then the sweeper's, further and further apart
    found = ask(client, GetOrder(order_id=order["order_id"]))
    assert found["payment"]["status"] == "unknown_to_provider"
    assert "Stripe has no such object" in found["history"][-1]["reason"]
    time.sleep(6 * sweeper.SWEEP_EVERY)  # six sweeps, past the longest back-off and a sweep: a listed step is tried
    assert cancels() == tried
    closed = ask(client, CancelOrder(order_id=order["order_id"]))  # a person closes it: nothing to refund
    assert closed["status"] == "cancelled" and payments.asked(subjects.PAYMENTS_REFUND) == []


def test_an_expiry_that_finds_the_intent_paid_marks_the_order_paid(
    short_orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 4)
    payments.cancel_status = "succeeded"  # paid a moment before the sweeper's cancel reached the provider
    order = ask(client, buy(mug, 2))
    wait_for(lambda: status_of(client, order["order_id"]) == "paid", "paid, not expired")
    assert stock(client, mug) == (2, 0)
    assert "expired" not in [h["status"] for h in ask(client, GetOrder(order_id=order["order_id"]))["history"]]


def test_units_committed_by_an_interrupted_payment_are_never_taken_twice(
    short_orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    order = ask(client, buy(mug, 2))

    async def commit_as_a_crashed_payment_did(nc: nats.NATS) -> None:
        lanes = await LaneClient(nc, subjects.INVENTORY_LANE).start()
        cmd = CommitReservation(product_id=mug, reservation_id=order["order_id"])
        await lanes.call(mug, cmd.kind, cmd.model_dump(mode="json"), command_id="crashed-commit")
        await lanes.close()

    client.run(commit_as_a_crashed_payment_did)
    time.sleep(2.5)  # past the reservation's end: the sweeper must not expire an order whose units are sold
    assert status_of(client, order["order_id"]) == "awaiting_payment"
    for n in range(3):  # the payment, heard again (and more than once at a time)
        payments.publish(paid_event(order, n))
    wait_for(lambda: status_of(client, order["order_id"]) == "paid", "paid")
    time.sleep(0.5)
    assert stock(client, mug) == (3, 0)


def test_late_payments_heard_at_once_take_the_units_once(
    short_orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    order = ask(client, buy(mug, 2))
    wait_for(lambda: status_of(client, order["order_id"]) == "expired", "expired")
    for n in range(4):
        payments.publish(paid_event(order, n))
    wait_for(lambda: status_of(client, order["order_id"]) == "paid", "paid")
    time.sleep(0.5)
    assert stock(client, mug) == (3, 0)


def test_a_payment_for_a_cancelled_order_is_refunded(orders: Any, payments: FakePayments, client: Client) -> None:
    mug = new_product(client, 3)
    order = ask(client, buy(mug, 1))
    assert ask(client, CancelOrder(order_id=order["order_id"]))["status"] == "cancelled"
    payments.publish(paid_event(order))
    wait_for(lambda: status_of(client, order["order_id"]) == "refunded", "refunded")
    assert [r["order_id"] for r in payments.asked(subjects.PAYMENTS_REFUND)] == [order["order_id"]]
    assert stock(client, mug) == (3, 0)


def test_with_plenty_left_the_intent_is_asked_while_reserving_and_a_refusal_then_cancels_it(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    """The lane said 99 were left a moment ago, so the next checkout asks for its intent at once.

    Stock was cut meanwhile (an admin), so the lane refuses: the intent asked for nothing is
    cancelled and nothing is held. The refusal taught the process the stock is gone, so the next
    checkout waits for its reservation before asking the payment provider.
    """
    kettle = new_product(client, 100)
    first = ask(client, buy(kettle))
    ask(client, SetStock(product_id=kettle, on_hand=1))  # the first order holds the only unit left
    created = len(payments.asked(subjects.PAYMENTS_INTENT_CREATE))

    assert refused(client, buy(kettle)).code == "out_of_stock"
    asked = payments.asked(subjects.PAYMENTS_INTENT_CREATE)[created:]
    assert len(asked) == 1, "the intent was asked while the lane reserved"
    early = asked[0]["order_id"]
    wait_for(lambda: any(c["order_id"] == early for c in payments.asked(subjects.PAYMENTS_INTENT_CANCEL)),
             "the early intent's cancel")
    assert stock(client, kettle) == (1, 1)
    assert refused(client, buy(kettle)).code == "out_of_stock"
    assert len(payments.asked(subjects.PAYMENTS_INTENT_CREATE)) == created + 1, "no intent for a known sell-out"
    assert status_of(client, first["order_id"]) == "awaiting_payment"


def test_a_key_that_met_no_stock_may_be_tried_again_after_a_restock(orders: Any, client: Client) -> None:
    mug = new_product(client, 1)
    wanted = buy(mug, 2, user_id="u-restock", idempotency_key="try-again")
    assert refused(client, wanted).code == "out_of_stock"
    ask(client, SetStock(product_id=mug, on_hand=5))
    assert ask(client, wanted)["status"] == "awaiting_payment"
    assert stock(client, mug) == (5, 2)


def test_refused_checkouts_leave_nothing_for_the_cyclic_collector(orders: Any, client: Client) -> None:
    """A sold-out sale is mostly refusals: each one's traceback held the frame that held its task (about
    48 objects a refusal for the collector, whose runs were then ~15 % of the service's CPU)."""
    mug = new_product(client, 0)

    async def refuse(nc: nats.NATS) -> int:
        refusals = 0
        for n in range(40):
            try:
                await request(nc, buy(mug, idempotency_key=f"sold-out-{n}"), TIMEOUT)
            except DomainError:
                refusals += 1
        return refusals

    client.run(refuse)  # the first refusals warm the copies and connections
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage to be looked at
    try:
        assert client.run(refuse) == 40
        gc.collect()
        # Only the refusals' own: other tests' services may still be stopping in this process.
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, DomainError)
                or (inspect.isframe(o) and o.f_code.co_filename.endswith("saga.py"))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


# -- admin cancel ------------------------------------------------------------------------------


def test_an_admin_cancel_releases_an_unpaid_order_and_refunds_a_paid_one(
    orders: Any, payments: FakePayments, client: Client
) -> None:
    mug = new_product(client, 5)
    unpaid, paid = ask(client, buy(mug, 1)), ask(client, buy(mug, 2))
    payments.publish(paid_event(paid))
    wait_for(lambda: status_of(client, paid["order_id"]) == "paid", "paid")
    assert ask(client, CancelOrder(order_id=unpaid["order_id"]))["status"] == "cancelled"
    assert ask(client, CancelOrder(order_id=paid["order_id"]))["status"] == "refunded"
    assert [r["order_id"] for r in payments.asked(subjects.PAYMENTS_REFUND)] == [paid["order_id"]]
    assert stock(client, mug) == (5, 0)  # the unpaid order's units released, the refunded order's put back
    assert refused(client, CancelOrder(order_id=unpaid["order_id"])).code == "order_closed"


# -- a crash mid-saga ----------------------------------------------------------------------------


def test_orders_killed_between_reservation_and_intent_leaves_no_order_and_the_stock_comes_back(
    backends: None, payments: FakePayments, nats_url: str, database_url: str, tmp_path: Path, client: Client
) -> None:
    # A checkout writes its order once its lines are reserved and its intent exists: killed before
    # that, the buyer had no answer, there is no order, and the reservation ends at its TTL.
    env = {**os.environ, "CARTWHEEL_NATS_URL": nats_url, "CARTWHEEL_VAR_DIR": str(tmp_path),
           "CARTWHEEL_ORDERS_DATABASE_URL": database_url, "CARTWHEEL_METRICS_PORT": "0",
           "CARTWHEEL_ADMIN_TOKEN": "t" * 24, "CARTWHEEL_SECRET": "s" * 32, "CARTWHEEL_REQUEST_TIMEOUT": "3",
           "CARTWHEEL_CHECKOUT_RESUME_SECONDS": "1", "CARTWHEEL_RESERVATION_TTL_SECONDS": "3"}

    def start_orders(log_name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / log_name).open("wb")
        process = subprocess.Popen([sys.executable, "-m", "services.orders"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        wait_for(lambda: client.run(_answers(subjects.health("orders"))), "orders up")
        return process

    mug = new_product(client, 3)
    payments.hold_intents.set()
    first = start_orders("orders-1.log")
    try:
        async def checkout(nc: nats.NATS) -> None:
            with contextlib.suppress(Exception):
                await request(nc, buy(mug, 2), 2.0)

        client.run(checkout)  # no answer: payments holds the intent request
        wait_for(lambda: payments.asked(subjects.PAYMENTS_INTENT_CREATE), "the intent asked for")
        assert stock(client, mug) == (3, 2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    (asked,) = payments.asked(subjects.PAYMENTS_INTENT_CREATE)
    payments.hold_intents.clear()
    second = start_orders("orders-2.log")
    try:
        with pytest.raises(DomainError) as unknown:
            ask(client, GetOrder(order_id=asked["order_id"]))
        assert unknown.value.code == "not_found"
        wait_for(lambda: stock(client, mug) == (3, 0), "the reservation ended at its TTL")
        order = ask(client, buy(mug, 3))  # the buyer tries again: every unit can be had
        payments.publish(paid_event(order))
        wait_for(lambda: status_of(client, order["order_id"]) == "paid", "paid after the restart")
        assert stock(client, mug) == (0, 0)
    finally:
        second.terminate()
        second.wait(15)


def _answers(subject: str) -> Callable[[nats.NATS], Any]:
    async def probe(nc: nats.NATS) -> bool:
        try:
            await nc.request(subject, b"{}", timeout=0.5)
        except Exception:
            return False
        return True

    return probe


def test_the_sweeper_goes_round_every_intent_left_to_cancel_so_a_hundred_failing_ones_hide_none(
    database_url: str,
) -> None:
    from sqlalchemy.orm import sessionmaker

    from cartwheel.db import make_engine, migrate
    from services.orders import store as orders_store
    from services.orders.models import OrderRow

    migrate("orders", database_url)
    engine = make_engine(database_url)
    now = utcnow()
    ids = [f"ord_round_{n:03d}" for n in range(150)]
    try:
        with sessionmaker(engine).begin() as session:
            session.add_all(OrderRow(id=i, tenant="default", status="expired", version=1, currency="EUR",
                                     total_cents=100, lines="[]", reservation=i, payment_intent_id=f"pi_{i}",
                                     payment_status=orders_store.CANCEL_PENDING, created_at=now, updated_at=now)
                            for i in ids)

        def round_from(session: Any, after: str) -> list[str]:
            return orders_store.to_sweep(session, now=now, stalled_before=now, queued_before=now,
                                         cancels_after=after).uncancelled

        with sessionmaker(engine).begin() as session:
            first = round_from(session, "")
            rest = round_from(session, first[-1])
            again = round_from(session, rest[-1])
        # Before: the same hundred every sweep; failing for good (their intents gone), they hid the other fifty.
        assert (first, rest, again) == (ids[:100], ids[100:], [])
    finally:
        engine.dispose()


def test_the_sweepers_look_finds_each_kind_of_work_the_same_through_a_session_and_on_a_closed_file(
    database_url: str,
) -> None:
    """:func:`store.to_sweep`'s prebuilt statements: through a session (SQLite and PostgreSQL), and on SQLite on a
    closed file's own connection, as a quiet tenant's sweep reads it without opening its database."""
    from sqlalchemy import make_url
    from sqlalchemy.orm import sessionmaker

    from cartwheel.db import make_engine, migrate
    from cartwheel.statements import read_file
    from services.orders import store as orders_store
    from services.orders.models import OrderRow

    migrate("orders", database_url)
    engine = make_engine(database_url)
    now = utcnow()
    minute = timedelta(minutes=1)

    def order(order_id: str, status: str, updated: timedelta, reserved: timedelta | None = None,
              payment_status: str | None = None) -> OrderRow:
        return OrderRow(id=order_id, tenant="default", status=status, version=1, currency="EUR", total_cents=100,
                        lines="[]", reservation=order_id, payment_status=payment_status,
                        reserved_until=now + reserved if reserved is not None else None,
                        created_at=now - 2 * minute, updated_at=now + updated)

    rows = [order("o-overdue", "awaiting_payment", -minute, reserved=-minute),
            order("o-due-soon", "payment_failed", -minute, reserved=minute),
            order("o-stalled", "pending", -minute),
            order("o-queued", "reserved", -minute, reserved=5 * minute, payment_status=orders_store.QUEUED),
            order("o-queued-long", "reserved", -10 * minute, reserved=5 * minute, payment_status=orders_store.QUEUED),
            order("o-fresh", "pending", minute),
            order("o-uncancelled", "expired", -minute, payment_status=orders_store.CANCEL_PENDING),
            order("o-refunding", "paid", -minute, payment_status=orders_store.REFUNDING),
            order("o-refund-fresh", "paid", minute, payment_status=orders_store.REFUNDING),
            order("o-paid", "paid", -minute)]
    look = functools.partial(orders_store.to_sweep, now=now, stalled_before=now, queued_before=now - 5 * minute)
    expected = orders_store.ToSweep(overdue=["o-overdue"], stalled=["o-queued-long", "o-stalled"],
                                    uncancelled=["o-uncancelled"], refunding=["o-refunding"], due=now - minute)
    try:
        with sessionmaker(engine).begin() as session:
            assert not look(session) and look(session).due is None  # nothing to do in no orders
            session.add_all(rows)
        with sessionmaker(engine).begin() as session:
            assert look(session) == expected
        if database_url.startswith("sqlite"):
            engine.dispose()
            assert read_file(Path(make_url(database_url).database or ""), look) == expected
    finally:
        engine.dispose()


def test_orders_are_counted_by_status(
    monkeypatch: pytest.MonkeyPatch, backends: None, payments: FakePayments, database_url: str, start_service,
    client: Client,
) -> None:
    """``cartwheel_orders{status}``: the checkout funnel's last steps (awaiting payment → paid), on the dashboard."""
    from services.orders import counts

    monkeypatch.setattr(counts, "COUNT_EVERY_S", 0.2)
    orders = start_service("orders", orders_database_url=database_url, reservation_ttl_seconds=60)
    registry = orders.service.registry

    def count(status: str) -> float | None:
        return registry.get_sample_value("cartwheel_orders", {"status": status})

    wait_for(lambda: count("paid") == 0, "the first count: every status, at 0")
    waiting = ask(client, buy(new_product(client, 5)))
    wait_for(lambda: count("awaiting_payment") == 1, "an order awaiting payment counted")
    payments.publish(paid_event(waiting))
    wait_for(lambda: count("paid") == 1 and count("awaiting_payment") == 0, "the paid order counted")
