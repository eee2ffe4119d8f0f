"""The checkout saga: reserve every line, ask payments for an intent, then commit, release or refund.

Every step that changes an order is a version-checked transition written with its events
(:mod:`services.orders.store`); every step that changes another service is idempotent there
(lane command ids and reservation ids derived from the order, payment idempotency keys), so
any step can be repeated after a crash. A sweeper finishes or cleans up orders a crash left
mid-way, and expires orders whose reservation ran out unpaid. Inventory releases a reservation
at its own alarm even if orders is down: no stock is held past its TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from faststream.exceptions import NackMessage
from prometheus_client import Counter
from pydantic import TypeAdapter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cartwheel import observability, subjects
from cartwheel.bus import request
from cartwheel.contracts.base import Message, utcnow
from cartwheel.contracts.cart import CartView, GetCart
from cartwheel.contracts.catalog import Product
from cartwheel.contracts.inventory import CommitReservation, ReleaseReservation, ReserveStock, Restock
from cartwheel.contracts.orders import (
    CancelOrder,
    Checkout,
    GetOrder,
    ListOrders,
    OrderLine,
    OrderView,
    PayOrder,
    ShortLine,
)
from cartwheel.contracts.payments import (
    CancelIntent,
    CheckoutExpired,
    CheckoutSessionView,
    ConfirmIntent,
    CreateIntent,
    IntentQueued,
    IntentView,
    PaymentCanceled,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentEvent,
    PaymentFailed,
    PaymentIntentCreated,
    PaymentNotStarted,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentRequiresAction,
    PaymentSucceeded,
    RefundPayment,
    RefundView,
)
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.keyedlock import KeyedLocks
from cartwheel.lanes.client import LaneClient
from cartwheel.lookups import Lookups
from cartwheel.service import Service
from services.orders import store
from services.orders.claims import Claims
from services.orders.domain import (
    HOLDS_STOCK,
    PAID,
    RESUMABLE,
    TRANSITIONS,
    StockHints,
    Wanted,
    late_reservation,
    merge_wanted,
    new_order_id,
    out_of_stock,
    payment_mismatch,
    price_lines,
    reservation_id,
)
from services.orders.models import OrderRow
from services.orders.pages import CheckoutPages, has_open_page, hosted_ttl
from services.orders.sweeper import QUEUED_RESUME_S, Sweeper

log = logging.getLogger("cartwheel.orders")

STALE_RETRIES = 10
PLACING_RETRY_S = 1.0  # a payment event for an order not written yet comes back this much later
TRANSIENT = {"service_unavailable", "payment_provider_unavailable", "internal_error"}
"""Refusals that may go away by themselves: a payment event that met one comes back later."""
SETTLED_ELSEWHERE = frozenset({"refunded", "needs_review", "disputed", "dispute_lost"})
"""Statuses a success heard (again, or late) must not move: refunded, a person decides, or a dispute holds it."""


class Saga:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.timeout = self.settings.request_timeout * 0.8
        # How long after its intent a checkout may still be writing its order: a few of its steps' waits.
        self._placing_window = timedelta(seconds=self.settings.request_timeout * 3)
        self.inventory: LaneClient | None = None
        self.lookups: Lookups | None = None
        self.worker = service.instance
        self.claims = Claims(service, self.worker, self.timeout)  # one step at a time per order
        self._checkouts: dict[str, asyncio.Future[dict[str, Any]]] = {}  # Idempotency-Key scope -> the checkout
        self.hints = StockHints()
        self._carts = KeyedLocks()  # one checkout of a cart at a time in this process
        self.needs_review = Counter("cartwheel_orders_needs_review", "Orders put aside for a person, by why",
                                    ["reason"], registry=service.registry)
        self.sweeper = Sweeper(self)
        self.pages = CheckoutPages(self._ask)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.inventory = await LaneClient(self.service.broker.connection, subjects.INVENTORY_LANE).start()
        self.lookups = Lookups(lambda: self.service.broker.connection, self.timeout)
        self.lookups.catalog.start()  # prices only: checkout asks the lanes for stock, never a copy
        self.sweeper.start()

    async def stop(self) -> None:
        await self.sweeper.stop()
        if self.lookups:
            await self.lookups.stop()
        if self.inventory:
            await self.inventory.close()

    # -- queries ----------------------------------------------------------------------------

    async def get(self, query: GetOrder) -> dict[str, Any]:
        order = await self.service.db.read(lambda s: store.load_view(s, query.order_id))
        return order.model_dump(mode="json")

    async def list(self, query: ListOrders) -> dict[str, Any]:
        def read(session: Session) -> Any:
            return store.page(
                session, user_id=query.user_id, status=query.status, limit=query.limit, cursor=query.cursor
            )

        return (await self.service.db.read(read)).model_dump(mode="json")

    # -- checkout ---------------------------------------------------------------------------

    async def checkout(self, cmd: Checkout) -> dict[str, Any]:
        """Reserve every line, ask for the intent, then write the order once, already awaiting payment.

        A refusal (out of stock, prices changed) writes nothing. A crash between the reservation and
        the write leaves no order: the buyer had no answer, and the reservation ends at its TTL. A cart
        has one open order at most: checked out again with what it held then, whatever the
        Idempotency-Key, it gets that order (a second click, another tab); changed since, that order is
        cancelled and a new one placed.
        """
        if cmd.items is None and cmd.cart_id is not None:  # one checkout of a cart at a time (two clicks)
            async with self._carts.hold(cmd.cart_id):
                return await self._checkout_once(cmd)
        return await self._checkout_once(cmd)

    async def _checkout_once(self, cmd: Checkout) -> dict[str, Any]:
        """A retry with the same Idempotency-Key while the first is still at work here gets its answer."""
        key = _idempotency_scope(cmd)
        if key is None:
            return await self._checkout(cmd, None)
        task = self._checkouts.get(key)
        if task is None:  # else the buyer's retry overtook its first try (a gateway time-out): it gets that answer
            task = self._checkouts[key] = asyncio.ensure_future(self._checkout(cmd, key))
            task.add_done_callback(lambda _: self._checkouts.pop(key, None))  # if our caller gives up, it goes on
        try:
            return await asyncio.shield(task)
        finally:  # a refusal's traceback holds this frame: holding the task too would make a cycle of each one
            del task

    async def _checkout(self, cmd: Checkout, key: str | None) -> dict[str, Any]:
        if key is not None:
            existing = await self.service.db.lookup(store.ID_BY_IDEMPOTENCY_KEY, key=key)
            if existing is not None:
                return (await self._again(existing)).model_dump(mode="json")
        wanted, cart_id = await self._wanted(cmd)
        if cart_id is not None and (still_open := await self._open_order(cart_id, wanted)) is not None:
            return still_open.model_dump(mode="json")
        products = await self._products([w.product_id for w in wanted], cmd)
        lines, changes, currency = price_lines(wanted, products)
        if changes and not cmd.accept_price_changes:
            raise DomainError(
                "prices changed since these products were added to the cart",
                code="price_changed",
                changes=[c.model_dump() for c in changes],
            )
        order_id = new_order_id()
        observability.order_id.set(order_id)  # this checkout's task logs its order from here on
        placing = store.Placing(order_id, cmd.tenant, lines, currency, reservation_id(order_id),
                                user_id=cmd.user_id, email=cmd.email, cart_id=cart_id, idempotency_key=key)
        if cmd.mode == "hosted":
            intent: IntentView | CheckoutSessionView | None = await self._reserve_and_open_page(placing, cmd.return_url)
        else:
            intent = await self._reserve_and_ask_payment(placing)
        try:
            order = await self.service.db.run_batched(store.place, (placing, intent))
            log.debug("order %s placed, its payment %s", order_id, intent.payment_intent_id if intent else "queued")
        except IntegrityError:
            await self._let_go(placing, intent)
            existing = await self.service.db.lookup(store.ID_BY_IDEMPOTENCY_KEY, key=key) if key else None
            if existing is None and cart_id is not None:
                existing = await self.service.db.lookup(store.OPEN_ORDER_OF_CART, cart_id=cart_id)
            if existing is None:  # the order that won has closed meanwhile: this buyer may simply try again
                raise ServiceUnavailable(subjects.ORDERS_CHECKOUT, "a concurrent checkout won; try again") from None
            # The same Idempotency-Key, or a checkout of the same cart, raced this request in (another
            # replica): its order is the answer.
            return (await self._again(existing)).model_dump(mode="json")
        except BaseException as failure:  # the order was not written: nothing may stay held for it
            await asyncio.shield(self._let_go(placing, intent))
            if isinstance(failure, Exception) and not isinstance(failure, (DomainError, ServiceUnavailable)):
                log.exception("order %s could not be written; its stock and intent were let go", order_id)
                raise ServiceUnavailable(subjects.ORDERS_CHECKOUT, "the order could not be written; try again") \
                    from None
            raise
        self.service.notify_outbox()
        return order.model_dump(mode="json")

    async def _again(self, order_id: str) -> OrderView:
        """A checkout retried with its Idempotency-Key: the same order, carried on if it was left half-way."""
        async with self.claims.held(order_id):  # waits for the first request, if it is still at work
            row = await self._row(order_id)
            if row.status == "reserved" and row.payment_status != store.QUEUED:  # a crash came before its intent
                return await self._ask_payment(order_id)
        return await self._view(order_id)

    async def _open_order(self, cart_id: str, wanted: list[Wanted]) -> OrderView | None:
        """The cart's order still open for payment, if it holds what the cart holds now; one for what the
        cart held before is cancelled first (its intent too: it can't be paid any more), and None."""
        order_id = await self.service.db.lookup(store.OPEN_ORDER_OF_CART, cart_id=cart_id)
        if order_id is None:
            return None
        held = sorted((line.product_id, line.quantity) for line in _lines(await self._row(order_id)))
        if held == sorted((w.product_id, w.quantity) for w in merge_wanted(wanted)):
            return await self._again(order_id)
        async with self.claims.held(order_id):
            await self._end_unpaid(order_id, "cancelled", "its cart changed and was checked out again")
        now = (await self._row(order_id)).status
        if now in HOLDS_STOCK:  # its stock could not be let go now
            raise ServiceUnavailable(subjects.ORDERS_CHECKOUT, "the cart's earlier order is still open; try again")
        if now in PAID:  # paid meanwhile (another tab): the cart is done
            raise DomainError("this cart was checked out", code="cart_closed", status="checked_out")
        return None

    async def _wanted(self, cmd: Checkout) -> tuple[list[Wanted], str | None]:
        if cmd.items:
            return merge_wanted(Wanted(i.product_id, i.quantity) for i in cmd.items), None
        if cmd.cart_id is None:
            raise DomainError("there is nothing to check out", code="empty_cart")
        cart = CartView.model_validate(await self._ask(GetCart(tenant=cmd.tenant, cart_id=cmd.cart_id)))
        if cart.status in ("checked_out", "merged", "expired"):
            raise DomainError(f"this cart was {cart.status.replace('_', ' ')}", code="cart_closed", status=cart.status)
        if not cart.items:
            raise DomainError("the cart is empty", code="empty_cart")
        return [Wanted(i.product_id, i.quantity, i.unit_price_cents) for i in cart.items], cart.id

    async def _products(self, product_ids: list[str], cause: Message) -> dict[str, Product]:
        """Today's products, from this process's copy of the catalog's bucket where it has them."""
        assert self.lookups is not None

        async def one(product_id: str) -> tuple[str, Product | None]:
            try:
                return product_id, await self.lookups.product(product_id, cause, current=True)  # type: ignore[union-attr]
            except DomainError as refusal:
                if refusal.code == "not_found":
                    return product_id, None
                raise

        found = await asyncio.gather(*(one(p) for p in product_ids))
        return {product_id: product for product_id, product in found if product is not None}

    async def _reserve_and_ask_payment(self, placing: store.Placing) -> IntentView | None:
        """Hold every line, then get the order's intent (None: queued behind Stripe's rate limit); both at once
        when every line has plenty left.

        With plenty left (:meth:`StockHints.plenty`) a refusal is unlikely, so the buyer needn't wait
        for the lane before the payment provider: a refusal that still comes cancels the intent.
        """
        early = self.hints.plenty(placing.lines, time.monotonic())
        self.hints.begin(placing.lines)  # every reservation in flight counts, or a burst would outrun the hint
        try:
            if not early:
                await self._reserve_all(placing)
            else:
                held, intent = await asyncio.gather(self._reserve_all(placing), self._intent_for(placing),
                                                    return_exceptions=True)
        finally:
            self.hints.end(placing.lines)
        if not early:
            return await self._intent_for(placing)
        try:
            if isinstance(intent, BaseException):  # _intent_for released the lines; a late reserve holds nothing
                raise intent
            if isinstance(held, BaseException):  # _reserve_all let go of what it held
                await asyncio.shield(self._cancel_unplaced(placing, intent))
                raise held
            return intent
        finally:  # the refusal's traceback holds this frame: held, it would be a cycle (the burst when stock runs out)
            del held, intent

    async def _reserve_and_open_page(self, placing: store.Placing, return_url: str | None) -> CheckoutSessionView:
        """Hold every line (as long as Stripe keeps a checkout page open, at least), then open the order's page;
        if it can't be opened, the stock goes back and the buyer is told."""
        await self._reserve_all(placing, hosted_ttl(self.settings.reservation_ttl_seconds))
        try:
            page = await self.pages.open(placing, return_url)
        except BaseException as failure:
            log.warning("order %s: no checkout page (%r); releasing its stock", placing.order_id, failure)
            await asyncio.shield(self._release_quietly(placing))
            if isinstance(failure, DomainError) and failure.code == "payment_provider_busy":
                raise DomainError("payments are busy; try again", code="payment_provider_unavailable") from None
            raise
        placing.intent_at = utcnow()
        return page

    async def _reserve_all(self, placing: store.Placing, ttl: int | None = None) -> None:
        """Hold every line under the order's reservation, or none: :class:`DomainError` ``out_of_stock``."""
        ttl = ttl or self.settings.reservation_ttl_seconds
        placing.reserved_at = utcnow()
        placing.reserved_until = placing.reserved_at + timedelta(seconds=ttl)
        outcomes = await asyncio.gather(
            *(self._reserve_line(placing.tenant, placing.order_id, placing.reservation, line, ttl)
              for line in placing.lines),
            return_exceptions=True,
        )
        short = [o for o in outcomes if isinstance(o, ShortLine)]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if not short and failure is None:
            return
        # Lines refused by their lane hold nothing; any other may (a reply lost in a time-out included).
        unrefused = [line for line, o in zip(placing.lines, outcomes, strict=True) if not isinstance(o, ShortLine)]
        if unrefused:
            await self._release_quietly(placing, unrefused)
        if failure is not None:
            try:
                raise failure
            finally:  # nor may this frame hold it (in `outcomes` too) once its traceback holds the frame
                del failure, outcomes
        raise out_of_stock(short)

    async def _intent_for(self, placing: store.Placing) -> IntentView | None:
        """The new order's PaymentIntent, or None when payments queued it (Stripe's rate limit is fully used: it
        follows as :class:`PaymentIntentCreated`); if none can be had, its stock goes back and the buyer is told."""
        ask = CreateIntent(tenant=placing.tenant, order_id=placing.order_id, amount_cents=placing.total_cents,
                           currency=placing.currency, email=placing.email, not_after=placing.reserved_until)
        try:
            intent = await self._ask_intent(ask)
            if intent is None:
                log.info("order %s: its payment intent is queued behind Stripe's rate limit", placing.order_id)
                return None
        except BaseException as failure:
            log.warning("order %s: no payment intent (%r); releasing its stock", placing.order_id, failure)
            await asyncio.shield(self._release_quietly(placing))
            if not isinstance(failure, Exception):  # cancelled
                raise
            if isinstance(failure, DomainError) and failure.code != "payment_provider_unavailable":
                raise
            raise DomainError("payments are unavailable; try again", code="payment_provider_unavailable") from None
        placing.intent_at = utcnow()
        return intent

    async def _let_go(self, placing: store.Placing, intent: IntentView | CheckoutSessionView | None) -> None:
        """Undo a checkout whose order was never written: its stock back, its intent cancelled (or page closed)."""
        await self._release_quietly(placing)
        if isinstance(intent, CheckoutSessionView):  # nobody was given its address, should it stay open
            await self.pages.close(placing.tenant, placing.order_id, intent.checkout_session_id)
        else:
            await self._cancel_unplaced(placing, intent)

    async def _cancel_unplaced(self, placing: store.Placing, intent: IntentView | None) -> None:
        """Cancel the intent of an order that was never written; a failure is logged (nobody can pay it). A
        queued one is cancelled when it is created (:meth:`_intent_created` finds no order to pay)."""
        if intent is not None:
            await self._cancel_unpayable(placing.tenant, placing.order_id, intent.payment_intent_id)

    async def _cancel_unpayable(self, tenant: str, order_id: str, payment_intent_id: str) -> None:
        try:
            await self._ask(CancelIntent(tenant=tenant, order_id=order_id, payment_intent_id=payment_intent_id))
        except (DomainError, ServiceUnavailable) as failure:  # never shown to anyone, it can't be paid
            log.warning("order %s can't be paid; its intent was not cancelled (%s)", order_id, failure)

    async def _release_quietly(self, placing: store.Placing, lines: list[OrderLine] | None = None) -> None:
        """Release an unwritten order's lines; a release that fails is logged: the reservation's TTL ends it."""
        try:
            await self._release(placing.order_id, placing.reservation, placing.lines if lines is None else lines)
        except Exception as failure:
            log.warning("order %s was never placed; its stock is held until its reservation ends (%r)",
                        placing.order_id, failure)

    async def _ask_payment(self, order_id: str) -> OrderView:
        row = await self._row(order_id)
        ask = CreateIntent(tenant=row.tenant, order_id=row.id, amount_cents=row.total_cents, currency=row.currency,
                           email=row.email, not_after=row.reserved_until)
        try:
            intent = await self._ask_intent(ask)
        except ServiceUnavailable:
            raise  # the stock stays held: the sweeper (or the buyer's retry) asks again, the reservation bounds it
        except DomainError as failure:
            if failure.code in TRANSIENT or failure.code == "payment_provider_busy":
                raise DomainError("payments are unavailable; try again", code="payment_provider_unavailable") from None
            log.warning("order %s: no payment intent (%s); releasing its stock", order_id, failure)
            await self._end_unpaid(order_id, "cancelled", f"payment could not start: {failure}", idempotency_key=None)
            raise
        if intent is None:  # it follows as an event; the sweeper asks again if it does not
            await self._transition(order_id, lambda r: {"payment_status": store.QUEUED}
                                   if r.status == "reserved" else None)
        else:
            await self._attach_intent(order_id, intent)
        return await self._view(order_id)

    async def _ask_intent(self, ask: CreateIntent) -> IntentView | None:
        """Payments' answer to ``ask``: the intent, or None when it queued it (:class:`IntentQueued`)."""
        answer = _INTENT_OR_QUEUED.validate_python(await self._ask(ask))
        return None if isinstance(answer, IntentQueued) else answer

    async def _attach_intent(self, order_id: str, intent: IntentView | PaymentIntentCreated) -> bool:
        """The order's intent exists: a reserved order now awaits payment. False if the order can't be paid any
        more (ended while its intent was queued)."""
        fields = {
            "payment_intent_id": intent.payment_intent_id,
            "client_secret": intent.client_secret,
            "payment_status": intent.status,
        }

        def awaiting(r: OrderRow) -> tuple[str, str, dict[str, Any]] | dict[str, Any] | None:
            if r.status == "reserved":
                return "awaiting_payment", "payment intent created", fields
            if r.payment_intent_id is None and r.status in PAID:  # a webhook was quicker than this reply
                return fields
            return None

        await self._transition(order_id, awaiting)
        row = await self._row(order_id)
        return row.payment_intent_id == intent.payment_intent_id

    async def _intent_created(self, event: PaymentIntentCreated) -> None:
        """A queued intent was created: the order can be paid, or, ended meanwhile, its intent is cancelled."""
        if not await self._attach_intent(event.order_id, event):
            log.info("order %s ended before its queued intent was created: cancelling it", event.order_id)
            await self._cancel_unpayable(event.tenant, event.order_id, event.payment_intent_id)

    # -- paying -----------------------------------------------------------------------------

    async def pay(self, cmd: PayOrder) -> dict[str, Any]:
        async with self.claims.held(cmd.order_id):
            row = await self._row(cmd.order_id)
            if has_open_page(row):
                raise DomainError("this order is paid on its checkout page", code="conflict",
                                  checkout_url=row.checkout_url)
            if row.status == "reserved":
                raise DomainError("this order's payment is being prepared (it waits its turn at the payment "
                                  "provider); try again in a moment", code="payment_not_ready", status=row.status)
            if row.status not in ("awaiting_payment", "payment_failed") or row.payment_intent_id is None:
                raise DomainError(f"this order is {row.status}; it cannot be paid now", code="order_closed",
                                  status=row.status)
            if row.reserved_until is not None and row.reserved_until < utcnow():
                raise DomainError("this order's time to pay has run out", code="order_closed", status="expired")
            confirm = ConfirmIntent(tenant=row.tenant, order_id=row.id, payment_intent_id=row.payment_intent_id,
                                    payment_method=cmd.payment_method, return_url=cmd.return_url)
            intent = IntentView.model_validate(await self._ask(confirm))
            if intent.status == "succeeded":
                await self._succeeded(row.id, intent.payment_intent_id, intent.amount_received_cents,
                                      intent.currency_received)
            elif intent.last_error and intent.status == "requires_payment_method":
                await self._payment_failed(row.id, intent.last_error)
            else:
                await self._transition(
                    row.id,
                    lambda r: {"payment_status": intent.status, "payment_error": None}
                    if r.status in HOLDS_STOCK else None,
                )
        return (await self._view(row.id)).model_dump(mode="json")

    async def on_payment_event(self, event: PaymentEvent | PaymentNotStarted | CheckoutExpired) -> None:
        """A payment event from payments (a verified webhook or its own call's answer): move the order.

        Each step is idempotent, so a repeat changes nothing. A refusal that can't change by waiting
        (a bug, a payment the provider refused) is logged and dropped; anything else comes back later.
        An unknown order (the claim's not_found) comes back while its checkout may still be writing it.
        """
        try:
            async with self.claims.held(event.order_id):
                await self._on_payment(event)
        except DomainError as refusal:
            if refusal.code in TRANSIENT:
                raise
            if refusal.code == "not_found" and isinstance(event, PaymentCanceled):
                log.info("order %s: its intent was cancelled before the order was written (never placed)",
                         event.order_id)
                return
            if refusal.code == "not_found" and utcnow() - event.occurred_at < self._placing_window:
                raise NackMessage(delay=PLACING_RETRY_S) from None  # its checkout may still be writing it
            if refusal.code == "not_found" and isinstance(event, PaymentIntentCreated):  # it never was
                await self._cancel_unpayable(event.tenant, event.order_id, event.payment_intent_id)
                return
            log.error("order %s: %s from payment event %s was refused (%s: %s); not retried", event.order_id,
                      type(event).__name__, getattr(event, "stripe_event_id", event.id), refusal.code, refusal.message)

    async def _on_payment(self, event: PaymentEvent | PaymentNotStarted | CheckoutExpired) -> None:
        if isinstance(event, PaymentIntentCreated):
            await self._intent_created(event)
        elif isinstance(event, CheckoutExpired):
            await self._end_unpaid(event.order_id, "expired", "its checkout page closed unpaid", cancel_intent=False)
        elif isinstance(event, PaymentNotStarted):
            await self._end_unpaid(event.order_id, "cancelled", f"payment could not start: {event.reason}",
                                   idempotency_key=None)
        elif isinstance(event, PaymentSucceeded):
            await self._succeeded(event.order_id, event.payment_intent_id, event.amount_received_cents,
                                  event.currency_received)
        elif isinstance(event, PaymentFailed):
            await self._payment_failed(event.order_id, event.reason or "the payment failed")
        elif isinstance(event, PaymentCanceled):
            await self._end_unpaid(event.order_id, "cancelled", "the payment was cancelled", cancel_intent=False)
        elif isinstance(event, (PaymentRefunded, PaymentDisputed)) and (
                await self._row(event.order_id)).status in HOLDS_STOCK:
            raise NackMessage(delay=PLACING_RETRY_S)  # heard before its success (another consumer): back later
        elif isinstance(event, PaymentRefunded):
            await self._refunded_elsewhere(event.order_id, event.amount_refunded_cents)
        elif isinstance(event, (PaymentDisputed, PaymentDisputeClosed)):
            await self._dispute(event)
        elif isinstance(event, PaymentRefundFailed):
            await self._refund_failed(event)
        elif isinstance(event, PaymentRequiresAction):
            await self._transition(
                event.order_id,
                lambda r: {"payment_status": "requires_action"} if r.status in HOLDS_STOCK else None,
            )

    async def _succeeded(self, order_id: str, payment_intent_id: str, received_cents: int | None,
                         received_currency: str | None) -> None:
        """Every success, whoever told it (an event, our confirm or cancel call's answer): the order is paid
        if the payment took in its amount and currency, else put aside for a person. Money for a cancelled
        order goes back whatever it was."""
        row = await self._row(order_id)
        wrong = payment_mismatch(row.total_cents, row.currency, received_cents, received_currency)
        if wrong is None or row.status == "cancelled":
            await self._paid(order_id, payment_intent_id)
        else:
            await self._needs_review(row, payment_intent_id, wrong)

    async def _paid(self, order_id: str, payment_intent_id: str) -> None:
        """The money arrived: secure every line (commit its reservation, or reserve it again if that ended) and
        mark the order paid; if a line can't be had any more, give back what was secured and refund.

        Safe to repeat from any point: commits and reservations are idempotent in inventory, and a line
        committed by an earlier try answers as committed.
        """
        row = await self._row(order_id)
        if row.status in PAID or row.status in SETTLED_ELSEWHERE:
            return
        if row.payment_status == store.REFUNDING:  # an earlier try got as far as deciding to refund
            await self._refund(row, row.refund_reason or "refunded", _give_back(row))
            return
        if row.status == "cancelled":  # its stock was released: nothing to give back, only the money
            await self._refund(row, "paid after the order was cancelled", [])
            return
        fields = {"payment_intent_id": row.payment_intent_id or payment_intent_id, "payment_status": "succeeded",
                  "payment_error": None}
        lines = _lines(row)
        outcomes = await asyncio.gather(*(self._secure(row, line) for line in lines))
        if all(outcomes):
            late = row.status not in HOLDS_STOCK
            reason = "paid after its reservation ended; stock reserved again" if late else "paid"
            await self._transition(order_id, lambda r: ("paid", reason, fields) if r.status not in PAID else None)
            return
        secured = [line for line, ok in zip(lines, outcomes, strict=True) if ok]
        short = [line for line, ok in zip(lines, outcomes, strict=True) if not ok]
        log.info("order %s: paid, but %s can't be had any more: refunding", order_id,
                 ", ".join(line.product_id for line in short))
        await self._release(order_id, late_reservation(row.id), short)
        await self._refund(row, "paid after its reservation ended, and the stock is gone", secured)

    async def _secure(self, row: OrderRow, line: OrderLine) -> bool:
        """Commit the line's units for this order: under its reservation, else under the late one."""
        commit = CommitReservation(tenant=row.tenant, product_id=line.product_id, reservation_id=row.reservation)
        try:
            await self._lane(line.product_id, commit, _command_id(row.reservation, "commit", line.product_id))
            return True
        except DomainError as refusal:
            log.info("order %s: %s not held any more (%s); reserving it again", row.id, line.product_id, refusal.code)
        again = late_reservation(row.id)
        reserve = ReserveStock(tenant=row.tenant, product_id=line.product_id, reservation_id=again, order_id=row.id,
                               quantity=line.quantity, ttl_seconds=self.settings.reservation_ttl_seconds)
        try:
            await self._lane(line.product_id, reserve, _command_id(again, "reserve", line.product_id))
        except DomainError as refusal:
            if refusal.code != "reservation_closed" or refusal.details.get("status") != "committed":
                return False  # out of stock (or released by an earlier try that gave up)
        commit = CommitReservation(tenant=row.tenant, product_id=line.product_id, reservation_id=again)
        try:
            await self._lane(line.product_id, commit, _command_id(again, "commit", line.product_id))
        except DomainError:
            return False
        return True

    async def _needs_review(self, row: OrderRow, payment_intent_id: str, problem: str) -> None:
        """A payment that does not match its order: nothing is committed or shipped until a person decides."""
        if row.status in PAID or row.status == "refunded":  # settled already; only a person can judge it now
            log.error("order %s is %s, and a payment came that does not match it: %s", row.id, row.status, problem)
            return
        log.error("order %s needs review: %s", row.id, problem)
        moved = await self._transition(row.id, lambda r: (
            "needs_review", problem, {"payment_status": "succeeded", "payment_error": problem,
                                      "payment_intent_id": r.payment_intent_id or payment_intent_id})
            if "needs_review" in TRANSITIONS[r.status] else None)  # type: ignore[index]
        if moved is not None:
            self.needs_review.labels(reason="payment_mismatch").inc()

    async def _dispute(self, event: PaymentDisputed | PaymentDisputeClosed) -> None:
        """A chargeback opened (a paid order becomes ``disputed``) or closed (``paid`` again if the shop won,
        else ``dispute_lost``). An order in another status keeps it, with a line in its history."""
        if isinstance(event, PaymentDisputed):
            said = f"the buyer's bank disputes the payment ({event.reason or 'no reason given'})"
            to, payment = "disputed", "disputed"
        else:
            said = f"the dispute closed: {event.status}"
            to, payment = ("paid", "succeeded") if event.won else ("dispute_lost", "dispute_lost")

        def decide(r: OrderRow) -> tuple[str, str, dict[str, Any]] | None:
            if r.status == to:  # heard again
                return None
            moves = r.status == "disputed" if to != "disputed" else to in TRANSITIONS[r.status]  # type: ignore[index]
            return (to, said, {"payment_status": payment}) if moves else (r.status, f"{said} (while {r.status})", {})

        await self._transition(event.order_id, decide)

    async def _payment_failed(self, order_id: str, reason: str) -> None:
        """A declined attempt: the order says so and keeps its stock until its reservation runs out (Stripe
        lets the buyer try again on the same intent); unpaid by then, the sweeper expires it, intent and all."""
        fields = {"payment_status": "requires_payment_method", "payment_error": reason}
        await self._transition(order_id, lambda r: ("payment_failed", reason, fields)
                               if r.status in ("reserved", "awaiting_payment")
                               else fields if r.status == "payment_failed" else None)

    async def _refunded_elsewhere(self, order_id: str, refunded_cents: int) -> None:
        """Refunded at the provider (the dashboard, a dispute), ``refunded_cents`` in all so far.

        A partial refund is written down (``refunded_cents``, a history line) and changes nothing else:
        the order keeps its status and its units. Refunded in full, a paid order's stock comes back.
        """
        row = await self._row(order_id)
        if row.status == "refunded" or refunded_cents <= row.refunded_cents:
            return  # a replay, or older news than what we know
        if refunded_cents < row.total_cents:
            said = f"partially refunded at the payment provider: {refunded_cents} of {row.total_cents} {row.currency}"
            await self._transition(order_id, lambda r: (r.status, said, {"refunded_cents": refunded_cents})
                                   if refunded_cents > r.refunded_cents and r.status != "refunded" else None)
            return
        if row.status in PAID or row.status == "disputed":
            await self._restock(row, _lines(row))
        elif row.status == "needs_review":  # never committed: its reservation may still hold the units
            await self._release(row.id, row.reservation, _lines(row))
        full = {"payment_status": "refunded", "refunded_cents": row.total_cents}
        await self._transition(
            order_id,
            lambda r: ("refunded", "refunded at the payment provider", full)
            if r.status != "refunded" and "refunded" in TRANSITIONS[r.status] else None,  # type: ignore[index]
        )

    # -- cancelling, expiring, refunding ------------------------------------------------------

    async def cancel(self, cmd: CancelOrder) -> dict[str, Any]:
        async with self.claims.held(cmd.order_id):
            row = await self._row(cmd.order_id)
            if row.status in PAID:
                await self._refund(row, cmd.reason, _lines(row) if row.status == "paid" and cmd.restock else [])
            elif row.status == "needs_review":  # its stock was never committed: let it go, and the money back
                await self._release(row.id, row.reservation, _lines(row))
                if row.payment_status == store.UNKNOWN_TO_PROVIDER:  # no payment to give back
                    await self._transition(row.id, lambda r: ("cancelled", cmd.reason, {})
                                           if r.status == "needs_review" else None)
                else:
                    await self._refund(row, cmd.reason, [])
            elif row.status in (*HOLDS_STOCK, "pending"):
                await self._end_unpaid(row.id, "cancelled", cmd.reason)
            else:
                raise DomainError(f"this order is {row.status} already", code="order_closed", status=row.status)
        return (await self._view(row.id)).model_dump(mode="json")

    async def _end_unpaid(self, order_id: str, to: str, reason: str, *, cancel_intent: bool = True,
                          **fields: Any) -> None:
        """End an order that holds stock without a payment: cancel its intent, release its stock, move to ``to``.

        The intent goes first: if it turns out paid, the order is paid instead. A release refused
        because the units were committed means a payment got there first: the paid path owns the order.
        """
        row = await self._row(order_id)
        if row.status not in (*HOLDS_STOCK, "pending"):
            return
        if cancel_intent and has_open_page(row) and row.checkout_session_id:
            page = await self.pages.close(row.tenant, row.id, row.checkout_session_id)
            if page is not None and page.status == "complete":
                log.info("order %s was paid on its checkout page meanwhile: its payment settles it", order_id)
                return
            fields = {**fields, "payment_status": store.CANCEL_PENDING if page is None else page.status}
        if cancel_intent and row.payment_intent_id:
            try:
                intent = IntentView.model_validate(await self._ask(
                    CancelIntent(tenant=row.tenant, order_id=row.id, payment_intent_id=row.payment_intent_id)))
            except (DomainError, ServiceUnavailable) as failure:
                log.warning("order %s: its intent could not be cancelled now (%s); trying again later", order_id,
                            failure)
                fields = {**fields, "payment_status": store.CANCEL_PENDING}
            else:
                if intent.status == "succeeded":
                    await self._succeeded(order_id, intent.payment_intent_id, intent.amount_received_cents,
                                          intent.currency_received)
                    return
                fields = {**fields, "payment_status": intent.status}
        if await self._release(row.id, row.reservation, _lines(row)):
            log.warning("order %s: its stock was committed meanwhile (a payment); not ending it %s", order_id, to)
            return
        ended = {**fields, "idempotency_key": None}  # the key (a cart version's) may check out again
        await self._transition(
            order_id, lambda r: (to, reason, ended) if r.status in (*HOLDS_STOCK, "pending") else None
        )

    async def _refund(self, row: OrderRow, reason: str, give_back: list[OrderLine]) -> None:
        """Refund the order's payment and return ``give_back`` (lines whose units were committed) to stock.

        ``refunding`` is written first: a payment heard again meanwhile finishes the refund, never re-sells.
        """
        if row.payment_intent_id is None:
            raise DomainError("this order has no payment to refund", code="order_closed", status=row.status)
        decided = {"payment_status": store.REFUNDING, "refund_reason": reason,
                   "give_back": json.dumps([line.product_id for line in give_back])}
        await self._transition(row.id, lambda r: decided if r.status != "refunded" else None)
        refund = RefundView.model_validate(await self._ask(
            RefundPayment(tenant=row.tenant, order_id=row.id, payment_intent_id=row.payment_intent_id)))
        if refund.status not in ("succeeded", "pending"):  # Stripe took the request but did not give the money
            await self._refund_stuck(row.id, f"the refund {refund.refund_id} is {refund.status} at the provider")
            return
        await self._restock(row, give_back)
        full = {"payment_status": "refunded" if refund.status == "succeeded" else "refund_pending",
                "refunded_cents": row.total_cents}
        await self._transition(row.id, lambda r: ("refunded", reason, full) if r.status != "refunded" else None)

    async def _refund_stuck(self, order_id: str, problem: str, **fields: Any) -> None:
        """A refund that did not (or no longer) give the money back: the order goes to a person (who may
        refund it from Stripe's dashboard)."""
        log.error("order %s: %s", order_id, problem)
        lost = {"payment_status": "refund_failed", "payment_error": problem, **fields}
        moved = await self._transition(order_id, lambda r: ("needs_review", problem, lost)
                                       if "needs_review" in TRANSITIONS[r.status] else lost)  # type: ignore[index]
        if moved is not None and moved.status == "needs_review":
            self.needs_review.labels(reason="refund_failed").inc()

    async def _refund_failed(self, event: PaymentRefundFailed) -> None:
        """A refund failed after Stripe had taken it: what is still paid goes up again; a refunded order
        goes to a person (the buyer has not got their money), any other keeps its status, with a line."""
        row = await self._row(event.order_id)
        problem = (f"a refund of {event.amount_not_refunded_cents} {event.currency} failed at the provider "
                   f"({event.reason or 'no reason given'})")
        still = max(0, row.refunded_cents - event.amount_not_refunded_cents)
        if row.status == "refunded":
            await self._refund_stuck(event.order_id, problem, refunded_cents=still)
            return
        await self._transition(event.order_id, lambda r: (r.status, problem, {
            "refunded_cents": still, "payment_status": "refund_failed", "payment_error": problem}))

    async def _restock(self, row: OrderRow, lines: list[OrderLine]) -> None:
        """Put a refunded order's committed units back on hand (once per order and product)."""

        async def one(line: OrderLine) -> None:
            cmd = Restock(tenant=row.tenant, product_id=line.product_id, quantity=line.quantity)
            await self._lane(line.product_id, cmd, _command_id(row.id, "restock", line.product_id))

        await asyncio.gather(*(one(line) for line in lines))

    # -- inventory --------------------------------------------------------------------------

    async def _reserve_line(self, tenant: str, order_id: str, reservation: str, line: OrderLine,
                            ttl: int) -> ShortLine | None:
        """Reserve one line under ``reservation``; the short line if its lane refused it."""
        cmd = ReserveStock(tenant=tenant, product_id=line.product_id, reservation_id=reservation,
                           order_id=order_id, quantity=line.quantity, ttl_seconds=ttl)
        try:
            held = await self._lane(line.product_id, cmd, _command_id(reservation, "reserve", line.product_id))
        except DomainError as refusal:
            available = int(refusal.details.get("available", 0) or 0)
            if refusal.code == "out_of_stock":
                self.hints.heard(line.product_id, available, time.monotonic())
            return ShortLine(product_id=line.product_id, requested=line.quantity, available=available)
        self.hints.heard(line.product_id, held.get("available"), time.monotonic())
        return None

    async def _release(self, order_id: str, reservation: str, lines: list[OrderLine]) -> bool:
        """Release every line; one never reserved is remembered as released, so a late reserve holds nothing.

        True when a line was committed instead (a payment got there first): nothing of it was released.
        """

        async def one(line: OrderLine) -> bool:
            cmd = ReleaseReservation(product_id=line.product_id, reservation_id=reservation)
            try:
                await self._lane(line.product_id, cmd, _command_id(reservation, "release", line.product_id))
            except DomainError as refusal:
                if refusal.code == "reservation_committed":
                    return True
                log.warning("order %s: release of %s refused (%s)", order_id, line.product_id, refusal.code)
            return False

        return any(await asyncio.gather(*(one(line) for line in lines)))

    async def _lane(self, product_id: str, cmd: Any, command_id: str) -> Any:
        assert self.inventory is not None
        return await self.inventory.call(product_id, cmd.kind, cmd.model_dump(mode="json"), command_id=command_id,
                                         timeout=self.timeout)

    # -- the sweeper's steps (:mod:`services.orders.sweeper` decides which order needs which, and when) ------

    async def expire(self, order_id: str) -> None:
        await self._end_unpaid(order_id, "expired", "unpaid when its reservation ran out")

    async def refund_again(self, order_id: str) -> None:
        """A refund decided and not finished (a crash, payments unreachable): ask again (it is idempotent)."""
        row = await self._row(order_id)
        if row.payment_status != store.REFUNDING:
            return
        log.warning("order %s was left refunding: asking for its refund again", order_id)
        await self._refund(row, row.refund_reason or "refunded", _give_back(row))

    async def resume(self, order_id: str) -> None:
        row = await self._row(order_id)
        if row.status not in RESUMABLE:
            return
        if row.payment_status == store.QUEUED:
            log.warning("order %s: its queued intent was not announced in %.0f s; asking again", order_id,
                        QUEUED_RESUME_S)
        else:
            log.warning("order %s was left %s (a crash mid-checkout?): resuming", order_id, row.status)
        if row.status == "pending":  # the buyer was never answered: let go of whatever was reserved
            await self._end_unpaid(order_id, "cancelled", "checkout did not finish", idempotency_key=None)
        else:  # stock is held: ask for the intent, so a retry with its key can pay
            await self._ask_payment(order_id)

    async def cancel_intent_again(self, order_id: str) -> None:
        row = await self._row(order_id)
        if row.payment_status != store.CANCEL_PENDING:
            return
        if has_open_page(row) and row.checkout_session_id:  # its checkout page could not be closed
            page = await self.pages.close(row.tenant, row.id, row.checkout_session_id)
            if page is None:
                raise ServiceUnavailable(subjects.PAYMENTS_CHECKOUT_EXPIRE, "the checkout page is still open")
            await self._transition(order_id, lambda r: {"payment_status": page.status}
                                   if r.payment_status == store.CANCEL_PENDING else None)
            return  # paid there meanwhile: its payment event refunds it (the order ended)
        if row.payment_intent_id is None:
            return
        intent = IntentView.model_validate(await self._ask(
            CancelIntent(tenant=row.tenant, order_id=row.id, payment_intent_id=row.payment_intent_id)))
        if intent.status == "succeeded":  # paid after all: the late-payment rules decide
            await self._succeeded(order_id, intent.payment_intent_id, intent.amount_received_cents,
                                  intent.currency_received)
        else:
            await self._transition(order_id, lambda r: {"payment_status": intent.status}
                                   if r.payment_status == store.CANCEL_PENDING else None)

    async def give_up(self, order_id: str, reason: str) -> None:
        """A sweep step that can't succeed: the order goes to a person, and out of the sweeper's lists."""
        lost = {"payment_status": store.UNKNOWN_TO_PROVIDER, "payment_error": reason}

        def decide(r: OrderRow) -> tuple[str, str, dict[str, Any]] | dict[str, Any]:
            return ("needs_review", reason, lost) if "needs_review" in TRANSITIONS[r.status] else lost  # type: ignore[index]

        async with self.claims.held(order_id, wait=0):
            moved = await self._transition(order_id, decide)
        if moved is not None and moved.status == "needs_review":
            self.needs_review.labels(reason="sweep_gave_up").inc()

    # -- plumbing ---------------------------------------------------------------------------

    async def _ask(self, message: Message) -> Any:
        return await request(self.service.broker.connection, message, self.timeout)

    async def _row(self, order_id: str) -> OrderRow:
        row = await self.service.db.read(lambda s: store.load(s, order_id))
        if row is None:
            raise DomainError(f"no order {order_id}", code="not_found", order_id=order_id)
        return row

    async def _view(self, order_id: str) -> OrderView:
        return await self.service.db.read(lambda s: store.load_view(s, order_id))

    async def _transition(
        self, order_id: str, decide: Callable[[OrderRow], tuple[str, str, dict[str, Any]] | dict[str, Any] | None]
    ) -> OrderView | None:
        """Read the order, ask ``decide`` what to do with it (a move ``(status, reason, fields)``, a history line
        ``(its status, reason, fields)``, a change of fields, or nothing), and write it; read again and decide
        again if it moved meanwhile."""

        def work(session: Session) -> OrderView | None:
            row = store.load(session, order_id)
            if row is None:
                return None
            decision = decide(row)
            if decision is None:
                return None
            if isinstance(decision, dict):
                return store.view(store.change(session, row, **decision))
            to, reason, fields = decision
            if to == row.status:  # a history line that keeps the status
                return store.note(session, row, reason, **fields)
            return store.move(session, row, to, reason, **fields)[1]  # type: ignore[arg-type]

        for _ in range(STALE_RETRIES):
            try:
                result = await self.service.db.run(work)
            except store.Stale:
                continue
            self.service.notify_outbox()
            return result
        raise ServiceUnavailable(subjects.ORDERS_CHECKOUT, f"order {order_id} kept changing; try again")


_INTENT_OR_QUEUED: TypeAdapter[IntentView | IntentQueued] = TypeAdapter(IntentQueued | IntentView)


def _lines(row: OrderRow) -> list[OrderLine]:
    return [OrderLine.model_validate(line) for line in json.loads(row.lines)]


def _give_back(row: OrderRow) -> list[OrderLine]:
    """The lines a refund under way puts back on hand, as decided when it started."""
    products = set(json.loads(row.give_back or "[]"))
    return [line for line in _lines(row) if line.product_id in products]


def _command_id(reservation: str, step: str, product_id: str) -> str:
    """Lane command ids are plain tokens: the reservation's dots become dashes."""
    return f"{reservation.replace('.', '-')}-{step}-{product_id}"


def _idempotency_scope(cmd: Checkout) -> str | None:
    """The key as the buyer's: two buyers who happen to send the same key get their own orders.

    A buyer is the signed-in user, else the cart, else (an anonymous buy-now) the browser the gateway gave an
    id. Never what the request says: a key and body anyone may replay would hand them the buyer's order.
    Nobody to scope it to, the key is not used.
    """
    if cmd.idempotency_key is None:
        return None
    if cmd.user_id:
        buyer = f"user:{cmd.user_id}"
    elif cmd.cart_id:
        buyer = f"cart:{cmd.cart_id}"
    elif cmd.visitor_id:
        buyer = f"visitor:{cmd.visitor_id}"
    else:
        return None
    return f"{buyer}:{cmd.idempotency_key}"
