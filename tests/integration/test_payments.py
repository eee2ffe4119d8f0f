"""The payments service against localstripe, a real nats-server and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import stripe
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from nats.js.api import DeliverPolicy

from cartwheel import subjects
from cartwheel.bus import request
from cartwheel.contracts.payments import (
    CancelIntent,
    ConfirmIntent,
    CreateIntent,
    RefundPayment,
    StripeWebhook,
)
from cartwheel.db import Database, PlatformBase, migrate
from cartwheel.errors import DomainError
from cartwheel.localstripe import register_webhook, start_localstripe
from cartwheel.natsserver import free_port
from services.payments.models import Base as PaymentsBase
from tests.helpers import random_sku
from tests.stripe_fixtures import WebhookEndpoint, localstripe  # noqa: F401

TIMEOUT = 15.0
API_KEY = "sk_test_cartwheel"
SECRET = "whsec_cartwheel_test"
THREE_D_SECURE_CARD = "4000002500003155"
Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def payments(database_url: str, localstripe: str, start_service):  # noqa: F811
    return start_service(
        "payments",
        payments_database_url=database_url,
        stripe_secret_key=API_KEY,
        stripe_api_base=localstripe,
        stripe_webhook_secret=SECRET,
    )


@pytest.fixture
def stripe_client(localstripe: str) -> stripe.StripeClient:  # noqa: F811
    """Stripe itself, as the tests see it (to look behind the service's back)."""
    return stripe.StripeClient(API_KEY, base_addresses={"api": localstripe}, max_network_retries=0)


def new_order() -> str:
    return random_sku("order")


async def create(nc: nats.NATS, order_id: str, amount_cents: int = 1234) -> dict[str, Any]:
    return await request(nc, CreateIntent(order_id=order_id, amount_cents=amount_cents, currency="EUR"), TIMEOUT)


async def confirm(nc: nats.NATS, order_id: str, intent_id: str, method: str) -> dict[str, Any]:
    message = ConfirmIntent(order_id=order_id, payment_intent_id=intent_id, payment_method=method,
                            return_url=f"http://shop.test/orders/{order_id}")
    return await request(nc, message, TIMEOUT)


async def payment_events(nc: nats.NATS, order_id: str, expect: int, quiet: float = 1.0) -> Events:
    """The order's payment events on the EVENTS stream: waits for ``expect``, then ``quiet`` s more for extras."""
    sub = await nc.jetstream().subscribe(
        subjects.PAYMENTS_EVENTS, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    loop = asyncio.get_running_loop()
    found: Events = []
    deadline, settled = loop.time() + 10, None
    while loop.time() < (settled or deadline):
        if len(found) >= expect and settled is None:
            settled = loop.time() + quiet
        try:
            msg = await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            continue
        body = json.loads(msg.data)
        if body.get("order_id") == order_id:
            assert msg.headers and msg.headers["Nats-Msg-Id"] == body["id"]
            found.append((msg.subject, body))
    await sub.unsubscribe()
    return found


def stripe_event(kind: str, subject: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": subject},
    }


def signed(event: dict[str, Any], secret: str = SECRET, at: int | None = None) -> StripeWebhook:
    payload = json.dumps(event, indent=2)
    return StripeWebhook(
        payload=payload, signature=stripe.WebhookSignature.generate_signature_header(payload, secret, at)
    )


async def deliver(nc: nats.NATS, webhook: StripeWebhook) -> dict[str, Any]:
    return await request(nc, webhook, TIMEOUT)


async def refused(nc: nats.NATS, webhook: StripeWebhook) -> str:
    with pytest.raises(DomainError) as caught:
        await deliver(nc, webhook)
    return caught.value.code


def intent_object(view: dict[str, Any], order_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": view["payment_intent_id"],
        "object": "payment_intent",
        "amount": view["amount_cents"],
        "currency": view["currency"].lower(),
        "status": status,
        "metadata": {"order_id": order_id},
        "last_payment_error": None,
        **fields,
    }


def charge_object(intent_id: str, amount: int, refunded: int, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": f"ch_test_{uuid.uuid4().hex[:14]}",
        "object": "charge",
        "payment_intent": intent_id,
        "amount": amount,
        "amount_refunded": refunded,
        "currency": "eur",
        "refunded": refunded >= amount,
        "metadata": metadata or {},
    }


def pays_at_stripe(stripe_client: stripe.StripeClient, intent_id: str, method: str = "pm_card_visa") -> dict[str, Any]:
    """What the buyer's browser does with Stripe.js: confirm at Stripe, not through the service."""
    stripe_client.v1.payment_intents.update(intent_id, params={"payment_method": method})
    try:
        back = {"return_url": "http://shop.test/orders/paid"}  # as Stripe.js sends the page's own address
        return stripe_client.v1.payment_intents.confirm(intent_id, params=back).to_dict()
    except stripe.CardError:
        return stripe_client.v1.payment_intents.retrieve(intent_id).to_dict()


# -- requests -------------------------------------------------------------------------------------


def test_a_card_payment_succeeds_and_is_announced_once(payments, client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order, 2599)
        assert made["status"] == "requires_payment_method" and made["payment_intent_id"].startswith("pi_")
        assert (made["amount_cents"], made["currency"]) == (2599, "EUR") and made["client_secret"]
        paid = await confirm(nc, order, made["payment_intent_id"], "pm_card_visa")
        assert paid["status"] == "succeeded" and paid["last_error"] is None
        again = await confirm(nc, order, made["payment_intent_id"], "pm_card_visa")  # a retry: no second charge
        assert again == paid
        [(subject, event)] = await payment_events(nc, order, expect=1)
        assert subject == subjects.PAYMENTS_SUCCEEDED
        assert event["payment_intent_id"] == made["payment_intent_id"]
        assert event["stripe_event_id"] == f"confirm:{made['payment_intent_id']}:succeeded"
        assert (event["amount_cents"], event["currency"], event["tenant"]) == (2599, "EUR", "default")

    client.run(scenario)


def test_a_decline_is_an_answer_with_the_reason_not_an_error(payments, client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order)
        declined = await confirm(nc, order, made["payment_intent_id"], "pm_card_chargeCustomerFail")
        assert declined["status"] == "requires_payment_method"
        assert declined["last_error"] == "Your card was declined."
        [(subject, event)] = await payment_events(nc, order, expect=1)
        assert subject == subjects.PAYMENTS_FAILED and event["reason"] == "Your card was declined."

    client.run(scenario)


def test_a_3d_secure_card_requires_action(payments, client, stripe_client) -> None:
    method = stripe_client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": THREE_D_SECURE_CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )

    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order)
        pending = await confirm(nc, order, made["payment_intent_id"], method.id)
        assert pending["status"] == "requires_action" and pending["last_error"] is None
        [(subject, _)] = await payment_events(nc, order, expect=1)
        assert subject == subjects.PAYMENTS_REQUIRES_ACTION

    client.run(scenario)


def test_an_intent_is_created_in_stripes_units_and_read_back_in_the_shops(payments, client, stripe_client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        for currency, ours, stripes in (("ISK", 5000, 500000), ("MGA", 500000, 5000), ("EUR", 1234, 1234)):
            order = new_order()
            made = await request(nc, CreateIntent(order_id=order, amount_cents=ours, currency=currency), TIMEOUT)
            assert (made["amount_cents"], made["currency"]) == (ours, currency)
            at_stripe = stripe_client.v1.payment_intents.retrieve(made["payment_intent_id"])
            assert at_stripe.amount == stripes, currency  # 5,000 ISK went to Stripe as 50 ISK before

    client.run(scenario)


def test_creating_twice_for_one_order_makes_one_intent(payments, client, stripe_client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        first = await create(nc, order)
        assert await create(nc, order) == first
        at_stripe = stripe_client.v1.payment_intents.list(params={"limit": 100000})
        assert [pi.id for pi in at_stripe.data if pi.to_dict()["metadata"].get("order_id") == order] == [
            first["payment_intent_id"]
        ]
        with pytest.raises(DomainError) as caught:
            await create(nc, order, amount_cents=999)
        assert caught.value.code == "conflict"
        raced = new_order()
        views = await asyncio.gather(*(create(nc, raced) for _ in range(5)))
        assert len({v["payment_intent_id"] for v in views}) == 1

    client.run(scenario)


def test_cancel_an_open_intent_but_leave_a_paid_one_alone(payments, client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        open_order, paid_order = new_order(), new_order()
        opened = await create(nc, open_order)
        canceled = await request(
            nc, CancelIntent(order_id=open_order, payment_intent_id=opened["payment_intent_id"]), TIMEOUT
        )
        assert canceled["status"] == "canceled"
        [(subject, _)] = await payment_events(nc, open_order, expect=1)
        assert subject == subjects.PAYMENTS_CANCELED

        paid = await create(nc, paid_order)
        await confirm(nc, paid_order, paid["payment_intent_id"], "pm_card_visa")
        kept = await request(
            nc, CancelIntent(order_id=paid_order, payment_intent_id=paid["payment_intent_id"]), TIMEOUT
        )
        assert kept["status"] == "succeeded"
        assert [s for s, _ in await payment_events(nc, paid_order, expect=1)] == [subjects.PAYMENTS_SUCCEEDED]
        with pytest.raises(DomainError) as caught:  # another order's intent
            await request(nc, CancelIntent(order_id=open_order, payment_intent_id=paid["payment_intent_id"]), TIMEOUT)
        assert caught.value.code == "not_found"

    client.run(scenario)


def test_a_refund_happens_once_per_order(payments, client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order, 4200)
        intent = made["payment_intent_id"]
        refund = RefundPayment(order_id=order, payment_intent_id=intent, reason="requested_by_customer")
        with pytest.raises(DomainError) as caught:  # nothing was paid yet
            await request(nc, refund, TIMEOUT)
        assert caught.value.code == "conflict"
        await confirm(nc, order, intent, "pm_card_visa")
        first = await request(nc, refund, TIMEOUT)
        assert first["refund_id"].startswith("re_") and (first["status"], first["amount_cents"]) == ("succeeded", 4200)
        assert await request(nc, refund.model_copy(update={"reason": None}), TIMEOUT) == first
        events = await payment_events(nc, order, expect=2)
        assert [s for s, _ in events] == [subjects.PAYMENTS_SUCCEEDED, subjects.PAYMENTS_REFUNDED]
        assert events[1][1]["amount_refunded_cents"] == 4200
        assert events[1][1]["stripe_event_id"] == f"refund:{first['refund_id']}"

    client.run(scenario)


def test_a_refund_that_fails_after_stripe_took_it_is_announced_and_counts_as_paid_again(
    payments, client, stripe_client
) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order, 4200)
        await confirm(nc, order, made["payment_intent_id"], "pm_card_visa")
        refund = await request(nc, RefundPayment(order_id=order, payment_intent_id=made["payment_intent_id"]),
                               TIMEOUT)
        failed = {"id": refund["refund_id"], "object": "refund", "amount": 4200, "currency": "eur",
                  "payment_intent": made["payment_intent_id"], "status": "failed",
                  "failure_reason": "expired_or_canceled_card"}
        event = signed(stripe_event("refund.failed", failed))
        assert [(await deliver(nc, event))["duplicate"] for _ in range(2)] == [False, True]
        # Before: ignored; the order stayed refunded while the buyer never got the money.
        events = await payment_events(nc, order, expect=3)
        assert [s for s, _ in events] == [subjects.PAYMENTS_SUCCEEDED, subjects.PAYMENTS_REFUNDED,
                                          subjects.PAYMENTS_REFUND_FAILED]
        assert (events[2][1]["amount_not_refunded_cents"], events[2][1]["reason"]) == (4200,
                                                                                      "expired_or_canceled_card")
        again = await request(nc, RefundPayment(order_id=order, payment_intent_id=made["payment_intent_id"]),
                              TIMEOUT)
        assert again["status"] == "failed"  # the order's one refund, as it is now

    client.run(scenario)


def test_without_a_stripe_key_requests_are_refused_as_unavailable(start_service, client) -> None:
    start_service("payments")

    async def scenario(nc: nats.NATS) -> None:
        with pytest.raises(DomainError) as caught:
            await create(nc, new_order())
        assert caught.value.code == "payment_provider_unavailable" and "CARTWHEEL_STRIPE_SECRET_KEY" in str(
            caught.value
        )
        assert await refused(nc, signed(stripe_event("customer.created", {"id": "cus_1"}))) == "invalid_signature"

    client.run(scenario)


def test_an_unreachable_stripe_is_unavailable_and_nothing_is_stored(start_service, client, localstripe) -> None:  # noqa: F811
    down = start_service("payments", stripe_secret_key=API_KEY, stripe_api_base=f"http://127.0.0.1:{free_port()}")

    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        with pytest.raises(DomainError) as caught:
            await create(nc, order)
        assert caught.value.code == "payment_provider_unavailable"
        errors = {"operation": "PaymentIntent.create", "kind": "unavailable"}
        assert down.service.registry.get_sample_value("cartwheel_stripe_errors_total", errors) == 1
        down.stop()
        start_service("payments", stripe_secret_key=API_KEY, stripe_api_base=localstripe)
        assert (await create(nc, order))["status"] == "requires_payment_method"

    client.run(scenario)


# -- webhooks -------------------------------------------------------------------------------------


def test_forged_tampered_and_stale_webhooks_are_refused_and_change_nothing(payments, client, stripe_client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order)
        pays_at_stripe(stripe_client, made["payment_intent_id"])
        event = stripe_event("payment_intent.succeeded", intent_object(made, order, "succeeded"))
        genuine = signed(event)
        tampered = genuine.model_copy(update={"payload": genuine.payload.replace('"amount": 1234', '"amount": 1')})
        assert tampered.payload != genuine.payload
        for bad in (
            signed(event, secret="whsec_forged"),
            tampered,
            signed(event, at=int(time.time()) - 400),  # older than the 300 s tolerance: a replay
            genuine.model_copy(update={"signature": ""}),
            genuine.model_copy(update={"signature": "t=1,v1=nonsense"}),
        ):
            assert await refused(nc, bad) == "invalid_signature"
        assert await payment_events(nc, order, expect=0, quiet=0.5) == []
        outcome = await deliver(nc, genuine)  # nothing was recorded: the genuine event is new
        assert outcome == {"event_id": event["id"], "type": "payment_intent.succeeded", "duplicate": False}
        [(subject, announced)] = await payment_events(nc, order, expect=1)
        assert subject == subjects.PAYMENTS_SUCCEEDED and announced["stripe_event_id"] == event["id"]

    client.run(scenario)


def test_one_event_delivered_ten_times_is_announced_once(payments, client, stripe_client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order)
        pays_at_stripe(stripe_client, made["payment_intent_id"])
        event = signed(stripe_event("payment_intent.succeeded", intent_object(made, order, "succeeded")))
        outcomes = await asyncio.gather(*(deliver(nc, event) for _ in range(10)))
        assert sorted(o["duplicate"] for o in outcomes) == [False] + [True] * 9
        late_failure = intent_object(
            made, order, "requires_payment_method", last_payment_error={"message": "Your card was declined."}
        )
        assert not (await deliver(nc, signed(stripe_event("payment_intent.payment_failed", late_failure))))["duplicate"]
        unknown = signed(stripe_event("customer.created", {"id": "cus_x", "object": "customer"}))
        assert [(await deliver(nc, unknown))["duplicate"] for _ in range(2)] == [False, True]
        events = await payment_events(nc, order, expect=1)
        assert [s for s, _ in events] == [subjects.PAYMENTS_SUCCEEDED]  # the older failure changed nothing
        paid = await confirm(nc, order, made["payment_intent_id"], "pm_card_visa")
        assert paid["status"] == "succeeded"  # answered from the stored state

    client.run(scenario)


def test_a_refund_reported_before_the_success_is_announced_after_it(payments, client, stripe_client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order, 1500)
        pays_at_stripe(stripe_client, made["payment_intent_id"])
        stripe_client.v1.refunds.create(params={"payment_intent": made["payment_intent_id"]})
        charge = charge_object(made["payment_intent_id"], 1500, 1500)
        assert not (await deliver(nc, signed(stripe_event("charge.refunded", charge))))["duplicate"]
        success = signed(stripe_event("payment_intent.succeeded", intent_object(made, order, "succeeded")))
        assert not (await deliver(nc, success))["duplicate"]
        events = await payment_events(nc, order, expect=2)
        assert [s for s, _ in events] == [subjects.PAYMENTS_SUCCEEDED, subjects.PAYMENTS_REFUNDED]
        assert events[1][1]["amount_refunded_cents"] == 1500

    client.run(scenario)


def test_events_for_an_intent_this_shop_did_not_create_are_recorded_and_ignored(
    payments, client, stripe_client
) -> None:
    order = new_order()  # made at Stripe by someone else (another system, the dashboard), naming an order id
    intent = stripe_client.v1.payment_intents.create(
        params={"amount": 800, "currency": "eur", "metadata": {"order_id": order}, "payment_method": "pm_card_visa"}
    )
    paid = stripe_client.v1.payment_intents.confirm(intent.id).to_dict()
    stripe_client.v1.refunds.create(params={"payment_intent": intent.id})
    charges = stripe_client.v1.charges.list(params={"limit": 100000})
    [refunded] = [c.to_dict() for c in charges.data if c.payment_intent == intent.id]

    async def scenario(nc: nats.NATS) -> None:
        for event in (stripe_event("payment_intent.succeeded", paid), stripe_event("charge.refunded", refunded)):
            assert [(await deliver(nc, signed(event)))["duplicate"] for _ in range(2)] == [False, True]  # recorded
        # Before, the order named in its metadata was announced paid, then refunded.
        assert await payment_events(nc, order, expect=0, quiet=1.0) == []

    client.run(scenario)


def test_an_event_is_read_as_the_intent_is_now_so_a_late_failure_does_not_fail_a_3d_secure_payment(
    payments, client, stripe_client, localstripe  # noqa: F811
) -> None:
    card = {"number": THREE_D_SECURE_CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    method = stripe_client.v1.payment_methods.create(params={"type": "card", "card": card})

    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await create(nc, order)
        assert pays_at_stripe(stripe_client, made["payment_intent_id"], method.id)["status"] == "requires_action"
        declined = intent_object(made, order, "requires_payment_method",
                                 last_payment_error={"message": "Your card was declined."})
        late = stripe_event("payment_intent.payment_failed", declined)
        late["created"] -= 120  # an earlier attempt's failure, delivered late
        assert not (await deliver(nc, signed(late)))["duplicate"]
        # What Stripe says now is announced: waiting for the buyer. Before, the order was told its payment
        # failed (its stock released and sold to someone else).
        assert [s for s, _ in await payment_events(nc, order, expect=1)] == [subjects.PAYMENTS_REQUIRES_ACTION]
        authenticate_3d_secure(localstripe, made)  # the buyer passes 3-D Secure; Stripe: succeeded
        partial = {"id": made["payment_intent_id"], "object": "payment_intent"}  # an event's object may be thin
        assert not (await deliver(nc, signed(stripe_event("payment_intent.succeeded", partial))))["duplicate"]
        events = await payment_events(nc, order, expect=2)
        assert [s for s, _ in events] == [subjects.PAYMENTS_REQUIRES_ACTION, subjects.PAYMENTS_SUCCEEDED]
        assert (events[1][1]["amount_received_cents"], events[1][1]["currency_received"]) == (1234, "EUR")

    client.run(scenario)


def test_an_event_for_our_intent_that_stripe_cannot_show_is_not_recorded_so_stripe_sends_it_again(
    payments, client, database_url: str
) -> None:
    from sqlalchemy.orm import sessionmaker

    from cartwheel.db import make_engine
    from services.payments import store
    from services.payments.domain import IntentSnapshot

    order = new_order()
    missing = f"pi_missing_{order}"  # ours (a row), but Stripe has no such intent (another account's key?)
    engine = make_engine(database_url)
    try:
        with sessionmaker(engine).begin() as session:
            store.insert_intent(session, IntentSnapshot(id=missing, order_id=order, tenant="default", amount_cents=500,
                                                        currency="EUR", status="requires_payment_method"), "default")
    finally:
        engine.dispose()
    event = stripe_event("payment_intent.succeeded", {"id": missing, "object": "payment_intent"})

    async def scenario(nc: nats.NATS) -> None:
        # Before: recorded and answered 200 (the report read off the event): Stripe would never send it again.
        assert [await refused(nc, signed(event)) for _ in range(2)] == ["payment_provider_unavailable"] * 2
        assert await payment_events(nc, order, expect=0, quiet=0.5) == []

    client.run(scenario)


def dispute_object(intent_id: str, amount: int, status: str) -> dict[str, Any]:
    """A Dispute as Stripe sends it in ``charge.dispute.*`` events (the embedded server makes none)."""
    return {"id": f"dp_test_{uuid.uuid4().hex[:14]}", "object": "dispute", "amount": amount, "currency": "eur",
            "charge": f"ch_test_{uuid.uuid4().hex[:14]}", "payment_intent": intent_id, "reason": "fraudulent",
            "status": status, "is_charge_refundable": False, "livemode": False}


def test_a_chargeback_is_announced_when_opened_and_when_closed(payments, client, stripe_client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        order, stranger = new_order(), new_order()
        made = await create(nc, order, 900)
        pays_at_stripe(stripe_client, made["payment_intent_id"])
        opened = dispute_object(made["payment_intent_id"], 900, "needs_response")
        created = signed(stripe_event("charge.dispute.created", opened))
        assert [(await deliver(nc, created))["duplicate"] for _ in range(2)] == [False, True]
        lost = signed(stripe_event("charge.dispute.closed", {**opened, "status": "lost"}))
        assert not (await deliver(nc, lost))["duplicate"]
        foreign = dispute_object("pi_not_ours_" + stranger, 500, "needs_response")
        assert not (await deliver(nc, signed(stripe_event("charge.dispute.created", foreign))))["duplicate"]
        # Before: ignored (the order stayed paid, as if nothing had happened).
        events = await payment_events(nc, order, expect=2)
        assert [s for s, _ in events] == [subjects.PAYMENTS_DISPUTED, subjects.PAYMENTS_DISPUTE_CLOSED]
        assert (events[0][1]["reason"], events[0][1]["amount_disputed_cents"]) == ("fraudulent", 900)
        assert (events[1][1]["status"], events[1][1]["won"]) == ("lost", False)

    client.run(scenario)


class Forwarder(WebhookEndpoint):
    """A webhook endpoint like the gateway's: the raw body and its Stripe-Signature go to payments over NATS."""

    def __init__(self, forward: Callable[[StripeWebhook], dict[str, Any]]) -> None:
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.forward = forward
        super().__init__(self._receive)

    def _receive(self, body: bytes, signature: str) -> int:
        try:
            answer, status = self.forward(StripeWebhook(payload=body.decode(), signature=signature)), 200
        except DomainError as exc:
            answer, status = exc.to_dict(), 400
        self.received.append((status, {**answer, "body": json.loads(body)}))
        return status

    def deliveries(self, intent_id: str) -> list[tuple[int, dict[str, Any]]]:
        return [(s, a) for s, a in self.received if a["body"]["data"]["object"].get("id") == intent_id]


@contextlib.contextmanager
def forwarding(client: Any, api_base: str, events: list[str]) -> Iterator[Forwarder]:
    """The payment server's ``events`` delivered to payments as the gateway does, until the block ends."""

    def forward(webhook: StripeWebhook) -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(deliver(client.nc, webhook), client.loop).result(TIMEOUT)

    endpoint = Forwarder(forward)
    webhook_id = f"test-{uuid.uuid4().hex[:8]}"
    register_webhook(api_base, endpoint.url, SECRET, events, webhook_id=webhook_id)
    try:
        yield endpoint
    finally:
        register_webhook(api_base, endpoint.url, SECRET, ["cartwheel.none"], webhook_id=webhook_id)  # off
        endpoint.server.shutdown()


@pytest.fixture
def forwarder(client, localstripe) -> Iterator[Forwarder]:  # noqa: F811
    with forwarding(client, localstripe, ["payment_intent.succeeded", "payment_intent.payment_failed"]) as endpoint:
        yield endpoint


def authenticate_3d_secure(api_base: str, intent: dict[str, Any]) -> None:
    """What the buyer's browser does with localstripe's stripe.js when the bank's page says yes."""
    form = {"client_secret": intent["client_secret"], "success": "true", "key": "pk_test_cartwheel"}
    url = f"{api_base}/v1/payment_intents/{intent['payment_intent_id']}/_authenticate"
    urllib.request.urlopen(urllib.request.Request(url, urllib.parse.urlencode(form).encode()), timeout=5).close()


def test_localstripe_webhooks_verify_and_repeat_what_confirm_announced(
    payments,
    client,
    forwarder,
    stripe_client,
    localstripe,  # noqa: F811
) -> None:
    method = stripe_client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": THREE_D_SECURE_CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )

    async def scenario(nc: nats.NATS) -> None:
        paid_order, declined_order, secure_order = new_order(), new_order(), new_order()
        paid, declined, secure = [await create(nc, o) for o in (paid_order, declined_order, secure_order)]
        await confirm(nc, paid_order, paid["payment_intent_id"], "pm_card_visa")
        await confirm(nc, declined_order, declined["payment_intent_id"], "pm_card_chargeCustomerFail")
        assert (await confirm(nc, secure_order, secure["payment_intent_id"], method.id))["status"] == "requires_action"
        authenticate_3d_secure(localstripe, secure)  # only the webhook tells the shop it succeeded
        intents = [v["payment_intent_id"] for v in (paid, declined, secure)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(forwarder.deliveries(i) for i in intents):
            await asyncio.sleep(0.1)
        expected = ["payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.succeeded"]
        for intent_id, kind in zip(intents, expected, strict=True):
            [(status, outcome)] = forwarder.deliveries(intent_id)
            assert (status, outcome["type"], outcome["duplicate"]) == (200, kind, False)
        assert [s for s, _ in await payment_events(nc, paid_order, expect=1)] == [subjects.PAYMENTS_SUCCEEDED]
        assert [s for s, _ in await payment_events(nc, declined_order, expect=1)] == [subjects.PAYMENTS_FAILED]
        secured = await payment_events(nc, secure_order, expect=2)
        assert [s for s, _ in secured] == [subjects.PAYMENTS_REQUIRES_ACTION, subjects.PAYMENTS_SUCCEEDED]
        assert secured[1][1]["stripe_event_id"].startswith("evt_")

    client.run(scenario)


def test_the_embedded_server_keeps_no_pickle(stripe_client) -> None:
    pickle = Path("/tmp/localstripe.pickle")  # where the stock localstripe command keeps its state
    before = pickle.stat().st_mtime_ns if pickle.exists() else None
    stripe_client.v1.customers.create(params={"email": "buyer@example.test"})
    assert (pickle.stat().st_mtime_ns if pickle.exists() else None) == before


def test_the_embedded_server_keeps_its_state_in_its_file_through_a_restart_and_a_sigkill(tmp_path: Path) -> None:
    state = tmp_path / "var" / "localstripe" / "state.pickle"

    def intents(server: Any) -> Any:
        client = stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, max_network_retries=0)
        return client.v1.payment_intents

    server = start_localstripe(state=state)
    try:
        first = intents(server).create(params={"amount": 500, "currency": "eur"})
    finally:
        server.stop()  # SIGTERM: what changed is written on the way out
    server = start_localstripe(state=state)
    try:
        # Before: the embedded server started empty, and the shop's sweeper asked it for intents it no longer
        # had, about 60 a second, for ever.
        assert intents(server).retrieve(first.id).amount == 500
        second = intents(server).create(params={"amount": 700, "currency": "eur"})
        time.sleep(1.0)  # written within 0.2 s
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(5)
    finally:
        server.stop()
    server = start_localstripe(state=state)
    try:
        assert intents(server).retrieve(second.id).amount == 700
    finally:
        server.stop()


def test_the_migrations_match_the_models(database_url: str) -> None:
    migrate("payments", database_url)
    migrate("payments", database_url)  # a second migrator finds nothing to do
    db = Database(database_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), [PaymentsBase.metadata, PlatformBase.metadata])
    db.close()
    assert diff == []


def test_an_intent_row_is_inserted_once_and_a_twin_is_told_it_was_not(database_url: str) -> None:
    """A second intent for the same order is not inserted, and says so (on PostgreSQL, rowcount said -1)."""
    from sqlalchemy.orm import sessionmaker

    from cartwheel.db import make_engine
    from services.payments import store
    from services.payments.domain import IntentSnapshot

    migrate("payments", database_url)
    engine = make_engine(database_url)
    order = new_order()

    def snap(intent_id: str) -> IntentSnapshot:
        return IntentSnapshot(id=intent_id, order_id=order, tenant="default", amount_cents=500, currency="EUR",
                              status="requires_payment_method", client_secret=f"{intent_id}_secret", last_error=None)

    try:
        with sessionmaker(engine).begin() as session:
            first = store.insert_intent(session, snap(f"pi_{order}_a"), "default")
            twin = store.insert_intent(session, snap(f"pi_{order}_b"), "default")
            assert first is not None and first.id == f"pi_{order}_a"
            assert twin is None
            assert store.intent_for_order(session, order).id == f"pi_{order}_a"  # type: ignore[union-attr]
        # One group of writes (Database.run_batched) holding two answers with one intent id, the second
        # saying another amount: the second is told what was written, not its own values.
        again = new_order()
        first_try = dataclasses.replace(snap(f"pi_{again}"), order_id=again)
        replayed = dataclasses.replace(first_try, amount_cents=999)
        with sessionmaker(engine).begin() as session:
            rows = store.keep_first_intents(session, [(first_try, "default"), (replayed, "default")])
            assert [r.amount_cents for r in rows] == [500, 500]  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_stripe_calls_and_webhook_events_are_counted(payments, client, stripe_client) -> None:
    """The metrics an incident asks of payments: how long Stripe takes and how it fails, by operation; what the
    webhooks bring, by type and result (a run of invalid signatures is an attack or a wrong secret)."""
    registry = payments.service.registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    async def scenario(nc: nats.NATS) -> None:
        declined = new_order()
        await confirm(nc, declined, (await create(nc, declined))["payment_intent_id"], "pm_card_chargeCustomerFail")
        order = new_order()
        made = await create(nc, order)
        pays_at_stripe(stripe_client, made["payment_intent_id"])
        event = stripe_event("payment_intent.succeeded", intent_object(made, order, "succeeded"))
        assert await refused(nc, signed(event, secret="whsec_forged")) == "invalid_signature"
        for _ in range(2):
            await deliver(nc, signed(event))
        await deliver(nc, signed(stripe_event("customer.created", {"id": "cus_x", "object": "customer"})))
        other = {**intent_object(made, order, "succeeded"), "id": "pi_not_ours"}
        await deliver(nc, signed(stripe_event("payment_intent.succeeded", other)))

    client.run(scenario)
    assert sample("cartwheel_stripe_request_duration_seconds_count", operation="PaymentIntent.create") == 2
    assert sample("cartwheel_stripe_request_duration_seconds_count", operation="PaymentIntent.confirm") >= 1
    assert sample("cartwheel_stripe_errors_total", operation="PaymentIntent.confirm", kind="declined") == 1
    succeeded = "payment_intent.succeeded"
    assert sample("cartwheel_webhook_events_total", type="unverified", result="invalid_signature") == 1
    assert sample("cartwheel_webhook_events_total", type=succeeded, result="applied") == 1
    assert sample("cartwheel_webhook_events_total", type=succeeded, result="duplicate") == 1
    assert sample("cartwheel_webhook_events_total", type=succeeded, result="ignored") == 1  # not this shop's
    assert sample("cartwheel_webhook_events_total", type="other", result="ignored") == 1


def test_an_intent_offers_the_accounts_payment_methods_and_mails_the_receipt_to_the_buyer(
    payments, client, stripe_client
) -> None:
    order_id = new_order()
    ask = CreateIntent(order_id=order_id, amount_cents=2500, currency="EUR", email="ada@example.com")
    made = client.run(lambda nc: request(nc, ask, TIMEOUT))
    intent = stripe_client.v1.payment_intents.retrieve(made["payment_intent_id"]).to_dict()
    assert intent["automatic_payment_methods"]["enabled"] is True  # not a fixed ["card"]: what the account offers
    assert intent["receipt_email"] == "ada@example.com"
    assert intent["metadata"]["order_id"] == order_id


def test_a_tenant_with_its_own_stripe_account_is_paid_into_it_and_its_webhooks_signed_by_it(
    start_service, client, localstripe, tmp_path: Path, nats_url: str,  # noqa: F811
) -> None:
    """Issue 17: per-tenant Stripe keys. The installation here has no key at all, so only a tenant whose own key is
    used can make an intent; the tenant's webhook secret verifies its events and no other tenant's."""
    from cartwheel.settings import Settings
    from services.payments.accounts import set_own_account
    from tests.integration.conftest import register_tenants, settings_for

    settings = settings_for(nats_url, tmp_path)
    register_tenants(nats_url, settings, ("acme", [f"acme-{uuid.uuid4().hex[:8]}.test"], {}))
    tenant_url = Settings(var_dir=tmp_path).database_url("payments", "acme")
    migrate("payments", tenant_url)
    set_own_account(tenant_url, "sk_test_acme_own", "whsec_acme_own")
    with pytest.raises(ValueError, match="not a Stripe secret key"):
        set_own_account(tenant_url, "pk_test_publishable", None)
    service = start_service("payments", stripe_api_base=localstripe)
    for _ in range(50):
        if service.service.tenants.entry("acme") is not None:
            break
        time.sleep(0.1)

    async def scenario(nc: nats.NATS) -> None:
        with pytest.raises(DomainError) as caught:  # the installation's own tenant: no key
            await create(nc, new_order())
        assert caught.value.code == "payment_provider_unavailable"
        order = new_order()
        made = await request(nc, CreateIntent(tenant="acme", order_id=order, amount_cents=990, currency="EUR"),
                             TIMEOUT)
        assert made["payment_intent_id"].startswith("pi_")
        event = stripe_event("customer.created", {"id": "cus_acme"})
        own = signed(event, secret="whsec_acme_own").model_copy(update={"tenant": "acme"})
        assert (await deliver(nc, own))["duplicate"] is False
        installation_signed = signed(event, secret=SECRET).model_copy(update={"tenant": "acme"})
        assert await refused(nc, installation_signed) == "invalid_signature"
        assert await refused(nc, signed(event, secret="whsec_acme_own")) == "invalid_signature"  # not the tenant's

    client.run(scenario)
    from sqlalchemy import create_engine, text

    engine = create_engine(tenant_url)
    with engine.connect() as conn:  # the intent is the tenant's, in its own database
        assert conn.execute(text("SELECT count(*) FROM payment_intents")).scalar() == 1
    engine.dispose()


def test_a_tenant_paid_into_the_installations_account_gets_its_events_wherever_stripe_sends_them(
    start_service, client, localstripe, stripe_client, tmp_path: Path, nats_url: str,  # noqa: F811
) -> None:
    """Review of issue 17: tenants without a Stripe account of their own share the installation's, whose one
    webhook endpoint (at the installation's host) receives all their events. They were recorded in the
    installation's database, found "not ours" and ignored: the tenant's orders were never paid. Now the payment's
    metadata names its tenant, and the event is recorded and announced there."""
    from cartwheel.settings import Settings
    from tests.integration.conftest import register_tenants, settings_for

    settings = settings_for(nats_url, tmp_path)
    register_tenants(nats_url, settings, ("shared-acct", ["shared.test"], {}))
    tenant_url = Settings(var_dir=tmp_path).database_url("payments", "shared-acct")
    migrate("payments", tenant_url)

    service = start_service("payments", stripe_secret_key=API_KEY, stripe_api_base=localstripe,
                            stripe_webhook_secret=SECRET)
    for _ in range(50):
        if service.service.tenants.entry("shared-acct") is not None:
            break
        time.sleep(0.1)

    async def scenario(nc: nats.NATS) -> None:
        order = new_order()
        made = await request(nc, CreateIntent(tenant="shared-acct", order_id=order, amount_cents=1234,
                                              currency="EUR"), TIMEOUT)
        pays_at_stripe(stripe_client, made["payment_intent_id"])
        paid = intent_object(made, order, "succeeded", metadata={"order_id": order, "tenant": "shared-acct"})
        outcome = await deliver(nc, signed(stripe_event("payment_intent.succeeded", paid)))  # at the own host
        assert outcome["duplicate"] is False
        [(subject, announced)] = await payment_events(nc, order, expect=1)
        assert subject == subjects.PAYMENTS_SUCCEEDED and announced["tenant"] == "shared-acct"
        refund = charge_object(made["payment_intent_id"], 1234, 1234)  # no metadata: Stripe is asked whose
        assert (await deliver(nc, signed(stripe_event("charge.refunded", refund))))["duplicate"] is False

    client.run(scenario)
    from sqlalchemy import create_engine, text

    for url, expected in ((tenant_url, 2), (settings.database_url("payments"), 0)):
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM stripe_events")).scalar() == expected, url
        engine.dispose()
