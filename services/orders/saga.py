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
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cartwheel import subjects
from cartwheel.bus import request
from cartwheel.contracts.base import Message, utcnow
from cartwheel.contracts.cart import CartView, GetCart
from cartwheel.contracts.catalog import GetProduct, Product
from cartwheel.contracts.inventory import CommitReservation, ReleaseReservation, ReserveStock
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
    ConfirmIntent,
    CreateIntent,
    IntentView,
    PaymentCanceled,
    PaymentEvent,
    PaymentFailed,
    PaymentRefunded,
    PaymentRequiresAction,
    PaymentSucceeded,
    RefundPayment,
)
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes.client import LaneClient
from cartwheel.service import Service
from services.orders import store
from services.orders.domain import (
    HOLDS_STOCK,
    PAID,
    Wanted,
    merge_wanted,
    new_order_id,
    price_lines,
    reservation_id,
    total_cents,
)
from services.orders.models import OrderRow

log = logging.getLogger("cartwheel.orders")

T = TypeVar("T")
STALE_RETRIES = 10
SWEEP_EVERY = 1.0  # seconds between looks for overdue and stalled orders
RESUMABLE = ("pending", "reserved")


class Saga:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.timeout = self.settings.request_timeout * 0.8
        self.inventory: LaneClient | None = None
        self.in_flight: set[str] = set()  # orders a handler of this process is working on
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.inventory = await LaneClient(self.service.broker.connection, subjects.INVENTORY_LANE).start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="orders-sweeper")

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
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
        key = _idempotency_scope(cmd)
        if key is not None:
            existing = await self.service.db.read(lambda s: store.by_idempotency_key(s, key))
            if existing is not None:
                return (await self._view(existing.id)).model_dump(mode="json")
        wanted, cart_id = await self._wanted(cmd)
        products = await self._products([w.product_id for w in wanted], cmd)
        lines, changes, currency = price_lines(wanted, products)
        if changes and not cmd.accept_price_changes:
            raise DomainError(
                "prices changed since these products were added to the cart",
                code="price_changed",
                changes=[c.model_dump() for c in changes],
            )
        order_id = new_order_id()
        self.in_flight.add(order_id)
        try:
            created = await self._create(order_id, cmd, key, cart_id, lines, currency)
            if created.order_id != order_id:  # a concurrent retry with the same key made it first
                return created.model_dump(mode="json")
            return (await self._reserve_and_ask_payment(order_id)).model_dump(mode="json")
        finally:
            self.in_flight.discard(order_id)

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
        async def one(product_id: str) -> tuple[str, Product | None]:
            try:
                found = await self._ask(GetProduct(tenant=cause.tenant, id_or_sku=product_id))
            except DomainError as refusal:
                if refusal.code == "not_found":
                    return product_id, None
                raise
            return product_id, Product.model_validate(found)

        found = await asyncio.gather(*(one(p) for p in product_ids))
        return {product_id: product for product_id, product in found if product is not None}

    async def _create(
        self, order_id: str, cmd: Checkout, key: str | None, cart_id: str | None, lines: list[OrderLine], currency: str
    ) -> OrderView:
        now = utcnow()
        row = OrderRow(
            id=order_id,
            tenant=cmd.tenant,
            status="pending",
            version=1,
            user_id=cmd.user_id,
            email=cmd.email,
            cart_id=cart_id,
            idempotency_key=key,
            currency=currency,
            total_cents=total_cents(lines),
            lines=json.dumps([line.model_dump() for line in lines]),
            reservation=reservation_id(order_id),
            reservation_attempt=1,
            created_at=now,
            updated_at=now,
        )
        try:
            return await self.service.db.run(lambda s: store.insert(s, row, "checkout"))
        except IntegrityError:
            if key is None:
                raise
            # The same Idempotency-Key raced this request in: its order is the answer.
            existing = await self.service.db.read(lambda s: store.by_idempotency_key(s, key))
            if existing is None:
                raise
            return await self._view(existing.id)
        finally:
            self.service.notify_outbox()

    async def _reserve_and_ask_payment(self, order_id: str) -> OrderView:
        row = await self._row(order_id)
        lines = _lines(row)
        ttl = self.settings.reservation_ttl_seconds
        short = await self._reserve(row, lines, row.reservation, ttl)
        if short:
            await self._release(row.id, row.reservation, lines)
            await self._transition(
                order_id, lambda r: ("cancelled", "out of stock", {}) if r.status == "pending" else None
            )
            raise DomainError(
                "not enough stock for " + ", ".join(line.product_id for line in short),
                code="out_of_stock",
                lines=[line.model_dump() for line in short],
                **({"available": short[0].available, "product_id": short[0].product_id} if len(short) == 1 else {}),
            )
        until = utcnow() + timedelta(seconds=ttl)
        await self._transition(
            order_id,
            lambda r: ("reserved", "stock reserved", {"reserved_until": until}) if r.status == "pending" else None,
        )
        return await self._ask_payment(order_id)

    async def _ask_payment(self, order_id: str) -> OrderView:
        row = await self._row(order_id)
        ask = CreateIntent(
            tenant=row.tenant, order_id=row.id, amount_cents=row.total_cents, currency=row.currency, email=row.email
        )
        try:
            intent = IntentView.model_validate(await self._ask(ask))
        except (DomainError, ServiceUnavailable) as failure:
            log.warning("order %s: no payment intent (%s); releasing its stock", order_id, failure)
            await self._end_unpaid(order_id, "cancelled", f"payment could not start: {failure}")
            if isinstance(failure, DomainError) and failure.code != "payment_provider_unavailable":
                raise
            raise DomainError("payments are unavailable; try again", code="payment_provider_unavailable") from None
        fields = {
            "payment_intent_id": intent.payment_intent_id,
            "client_secret": intent.client_secret,
            "payment_status": intent.status,
        }

        def awaiting(r: OrderRow) -> tuple[str, str, dict[str, Any]] | dict[str, Any] | None:
            if r.status == "reserved":
                return "awaiting_payment", "payment intent created", fields
            if r.payment_intent_id is None:  # paid (a webhook was quicker than this reply): keep the intent's ids
                return fields
            return None

        await self._transition(order_id, awaiting)
        return await self._view(order_id)

    # -- paying -----------------------------------------------------------------------------

    async def pay(self, cmd: PayOrder) -> dict[str, Any]:
        row = await self._row(cmd.order_id)
        if row.status not in ("awaiting_payment", "payment_failed") or row.payment_intent_id is None:
            raise DomainError(
                f"this order is {row.status}; it cannot be paid now", code="order_closed", status=row.status
            )
        confirm = ConfirmIntent(
            tenant=row.tenant,
            order_id=row.id,
            payment_intent_id=row.payment_intent_id,
            payment_method=cmd.payment_method,
        )
        intent = IntentView.model_validate(await self._ask(confirm))
        if intent.status == "succeeded":
            await self.paid(row.id, intent.payment_intent_id, "paid")
        elif intent.last_error and intent.status == "requires_payment_method":
            await self.payment_failed(row.id, intent.last_error)
        else:
            await self._transition(row.id, lambda r: {"payment_status": intent.status, "payment_error": None})
        return (await self._view(row.id)).model_dump(mode="json")

    async def on_payment_event(self, event: PaymentEvent) -> None:
        """A payment event from payments (a verified webhook or a confirmation): move the order, idempotently."""
        exists = await self.service.db.read(lambda s: store.load(s, event.order_id))
        if exists is None:
            log.warning("payment event %s for unknown order %s ignored", event.stripe_event_id, event.order_id)
            return
        if isinstance(event, PaymentSucceeded):
            await self.paid(event.order_id, event.payment_intent_id, "paid")
        elif isinstance(event, PaymentFailed):
            await self.payment_failed(event.order_id, event.reason or "the payment failed")
        elif isinstance(event, PaymentCanceled):
            await self._end_unpaid(event.order_id, "cancelled", "the payment was cancelled")
        elif isinstance(event, PaymentRefunded):
            await self._transition(
                event.order_id,
                lambda r: (
                    ("refunded", "refunded at the payment provider", {"payment_status": "refunded"})
                    if r.status in PAID
                    else None
                ),
            )
        elif isinstance(event, PaymentRequiresAction):
            await self._transition(
                event.order_id,
                lambda r: {"payment_status": "requires_action"} if r.status in HOLDS_STOCK else None,
            )

    async def paid(self, order_id: str, payment_intent_id: str, reason: str) -> None:
        """The money arrived. Holding stock: commit it. Ended unpaid: re-reserve and commit, else refund."""
        row = await self._row(order_id)
        if row.status in PAID or row.status == "refunded":
            return
        fields = {
            "payment_intent_id": row.payment_intent_id or payment_intent_id,
            "payment_status": "succeeded",
            "payment_error": None,
        }
        lines = _lines(row)
        if row.status in HOLDS_STOCK or row.status == "pending":
            if await self._commit(row, lines):
                await self._transition(order_id, lambda r: ("paid", reason, fields) if r.status != "paid" else None)
                return
            log.info("order %s: its reservation ended before the payment arrived; reserving again", order_id)
            await self._end_unpaid(order_id, "expired", "the reservation ran out before the payment arrived")
            row = await self._row(order_id)
        if row.status == "cancelled":  # cancelled on purpose: the money goes back
            await self._refund(row, "paid after the order was cancelled")
            return
        attempt = row.reservation_attempt + 1
        again = reservation_id(row.id, attempt)
        await self._transition(order_id, lambda r: {"reservation": again, "reservation_attempt": attempt})
        row = await self._row(order_id)
        short = await self._reserve(row, lines, again, self.settings.reservation_ttl_seconds)
        if not short and await self._commit(row, lines):
            await self._transition(
                order_id,
                lambda r: (
                    ("paid", "paid after the reservation ended; stock reserved again", fields)
                    if r.status not in PAID
                    else None
                ),
            )
            return
        await self._release(row.id, again, lines)
        await self._refund(row, "paid after the reservation ended, and the stock is gone")

    async def payment_failed(self, order_id: str, reason: str) -> None:
        await self._end_unpaid(
            order_id, "payment_failed", reason, payment_status="requires_payment_method", payment_error=reason
        )

    # -- cancelling, expiring, refunding ------------------------------------------------------

    async def cancel(self, cmd: CancelOrder) -> dict[str, Any]:
        row = await self._row(cmd.order_id)
        if row.status in PAID:
            await self._refund(row, cmd.reason)
        elif row.status in (*HOLDS_STOCK, "pending"):
            await self._end_unpaid(row.id, "cancelled", cmd.reason)
        else:
            raise DomainError(f"this order is {row.status} already", code="order_closed", status=row.status)
        return (await self._view(row.id)).model_dump(mode="json")

    async def _end_unpaid(self, order_id: str, to: str, reason: str, **fields: Any) -> None:
        """Release the stock an unpaid order holds, cancel its intent, and end it with ``to``."""
        row = await self._row(order_id)
        if row.status not in (*HOLDS_STOCK, "pending"):
            if row.status == "payment_failed" and fields:
                await self._transition(order_id, lambda r: fields if r.status == "payment_failed" else None)
            return
        await self._release(row.id, row.reservation, _lines(row))
        if row.payment_intent_id and to in ("cancelled", "expired"):
            with contextlib.suppress(DomainError, ServiceUnavailable):  # it expires at Stripe on its own too
                await self._ask(
                    CancelIntent(tenant=row.tenant, order_id=row.id, payment_intent_id=row.payment_intent_id)
                )
        await self._transition(
            order_id, lambda r: (to, reason, fields) if r.status in (*HOLDS_STOCK, "pending") else None
        )

    async def _refund(self, row: OrderRow, reason: str) -> None:
        if row.payment_intent_id is None:
            raise DomainError("this order has no payment to refund", code="order_closed", status=row.status)
        await self._ask(RefundPayment(tenant=row.tenant, order_id=row.id, payment_intent_id=row.payment_intent_id))
        paid_lines = row.status in PAID
        await self._transition(
            row.id,
            lambda r: ("refunded", reason, {"payment_status": "refunded"}) if r.status != "refunded" else None,
        )
        if paid_lines:
            log.info("order %s refunded; its committed stock stays sold (restock by hand if it comes back)", row.id)

    # -- inventory --------------------------------------------------------------------------

    async def _reserve(self, row: OrderRow, lines: list[OrderLine], reservation: str, ttl: int) -> list[ShortLine]:
        """Reserve every line under ``reservation``; the lines that could not be (none: all held)."""
        assert self.inventory is not None

        async def one(line: OrderLine) -> ShortLine | None:
            cmd = ReserveStock(
                tenant=row.tenant,
                product_id=line.product_id,
                reservation_id=reservation,
                order_id=row.id,
                quantity=line.quantity,
                ttl_seconds=ttl,
            )
            try:
                await self._lane(line.product_id, cmd, _command_id(reservation, "reserve", line.product_id))
            except DomainError as refusal:
                available = refusal.details.get("available", 0)
                return ShortLine(product_id=line.product_id, requested=line.quantity, available=int(available or 0))
            return None

        return [short for short in await asyncio.gather(*(one(line) for line in lines)) if short is not None]

    async def _commit(self, row: OrderRow, lines: list[OrderLine]) -> bool:
        async def one(line: OrderLine) -> bool:
            cmd = CommitReservation(tenant=row.tenant, product_id=line.product_id, reservation_id=row.reservation)
            try:
                await self._lane(line.product_id, cmd, _command_id(row.reservation, "commit", line.product_id))
            except DomainError as refusal:
                log.info("order %s: commit of %s refused (%s)", row.id, line.product_id, refusal.code)
                return False
            return True

        return all(await asyncio.gather(*(one(line) for line in lines)))

    async def _release(self, order_id: str, reservation: str, lines: list[OrderLine]) -> None:
        """Release every line; one never reserved is remembered as released, so a late reserve holds nothing."""

        async def one(line: OrderLine) -> None:
            cmd = ReleaseReservation(product_id=line.product_id, reservation_id=reservation)
            try:
                await self._lane(line.product_id, cmd, _command_id(reservation, "release", line.product_id))
            except DomainError as refusal:  # committed: paid meanwhile; the paid path owns it now
                log.info("order %s: release of %s refused (%s)", order_id, line.product_id, refusal.code)

        await asyncio.gather(*(one(line) for line in lines))

    async def _lane(self, product_id: str, cmd: Any, command_id: str) -> Any:
        assert self.inventory is not None
        return await self.inventory.call(
            product_id, cmd.kind, cmd.model_dump(mode="json"), command_id=command_id, timeout=self.timeout
        )

    # -- the sweeper --------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self.sweep()
            except Exception:
                log.exception("orders sweep failed; trying again")

    async def sweep(self) -> int:
        """Expire overdue orders and finish or clean up stalled ones; how many orders it touched."""
        now = utcnow()
        overdue = await self.service.db.read(lambda s: store.overdue(s, now))
        stalled_before = now - timedelta(seconds=self.settings.checkout_resume_seconds)
        stalled = await self.service.db.read(lambda s: store.stalled(s, RESUMABLE, stalled_before))
        touched = 0
        for order_id in overdue:
            if order_id not in self.in_flight:
                await self._guarded(
                    order_id, self._end_unpaid(order_id, "expired", "unpaid when its reservation ran out")
                )
                touched += 1
        for order_id in stalled:
            if order_id not in self.in_flight and order_id not in overdue:
                await self._guarded(order_id, self._resume(order_id))
                touched += 1
        return touched

    async def _resume(self, order_id: str) -> None:
        row = await self._row(order_id)
        log.warning("order %s was left %s (a crash mid-checkout?): resuming", order_id, row.status)
        if row.status == "pending":  # the buyer was never answered: let go of whatever was reserved
            await self._end_unpaid(order_id, "cancelled", "checkout did not finish")
        elif row.status == "reserved":  # stock is held: ask for the intent, so a retry with its key can pay
            await self._ask_payment(order_id)

    async def _guarded(self, order_id: str, work: Awaitable[Any]) -> None:
        self.in_flight.add(order_id)
        try:
            await work
        except (DomainError, ServiceUnavailable) as failure:
            log.warning("order %s: sweep step failed (%s); trying again later", order_id, failure)
        finally:
            self.in_flight.discard(order_id)

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
        """Read the order, ask ``decide`` what to do with it (a move ``(status, reason, fields)``, a change of
        fields, or nothing), and write it; read again and decide again if it moved meanwhile."""

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
            return store.move(session, row, to, reason, **fields)[1]  # type: ignore[arg-type]

        for _ in range(STALE_RETRIES):
            try:
                result = await self.service.db.run(work)
            except store.Stale:
                continue
            self.service.notify_outbox()
            return result
        raise ServiceUnavailable(subjects.ORDERS_CHECKOUT, f"order {order_id} kept changing; try again")


def _lines(row: OrderRow) -> list[OrderLine]:
    return [OrderLine.model_validate(line) for line in json.loads(row.lines)]


def _command_id(reservation: str, step: str, product_id: str) -> str:
    """Lane command ids are plain tokens: the reservation's dots become dashes."""
    return f"{reservation.replace('.', '-')}-{step}-{product_id}"


def _idempotency_scope(cmd: Checkout) -> str | None:
    """The key as the buyer's: two buyers who happen to send the same key get their own orders.

    A buyer is the signed-in user, else the cart; an anonymous buy-now has neither, so what it asks
    for (items and email) stands in: the same key with another body is another checkout.
    """
    if cmd.idempotency_key is None:
        return None
    if cmd.user_id:
        buyer = f"user:{cmd.user_id}"
    elif cmd.cart_id:
        buyer = f"cart:{cmd.cart_id}"
    else:
        body = json.dumps([[i.product_id, i.quantity] for i in cmd.items or []] + [cmd.email], separators=(",", ":"))
        buyer = "anon:" + hashlib.sha256(body.encode()).hexdigest()[:32]
    return f"{buyer}:{cmd.idempotency_key}"
