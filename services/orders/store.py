"""Orders persistence: every change of an order names the version it read, and writes its transition and
events in the same transaction (outbox)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Select, and_, bindparam, func, insert, not_, or_, select, update
from sqlalchemy.orm import Session

from cartwheel import tracing
from cartwheel.contracts.base import Message, utcnow
from cartwheel.contracts.orders import (
    OrderCreated,
    OrderLine,
    OrderPage,
    OrderPaid,
    OrderStatus,
    OrderStatusChanged,
    OrderTransition,
    OrderView,
    PaymentInfo,
)
from cartwheel.contracts.payments import CheckoutSessionView, IntentView
from cartwheel.errors import Invalid, NotFound
from cartwheel.outbox import record_events
from cartwheel.statements import Statements, statements_of
from services.orders.domain import HOLDS_STOCK, PLACED_PATH, RESUMABLE, IllegalTransition, check_transition, total_cents
from services.orders.models import OPEN, OrderRow, OrderTransitionRow

log = logging.getLogger("cartwheel.orders")


class Stale(Exception):
    """The order changed since it was read (another handler moved it): read it again and decide again."""


def view(row: OrderRow, history: Sequence[OrderTransitionRow] = ()) -> OrderView:
    return OrderView(
        order_id=row.id,
        status=row.status,  # type: ignore[arg-type]
        lines=[OrderLine.model_validate(line) for line in json.loads(row.lines)],
        total_cents=row.total_cents,
        currency=row.currency,
        email=row.email,
        user_id=row.user_id,
        cart_id=row.cart_id,
        payment=PaymentInfo(
            payment_intent_id=row.payment_intent_id,
            client_secret=row.client_secret,
            status=row.payment_status,
            last_error=row.payment_error,
            checkout_session_id=row.checkout_session_id,
            checkout_url=row.checkout_url if row.status in HOLDS_STOCK else None,
        ),
        refunded_cents=row.refunded_cents or 0,
        reserved_until=row.reserved_until,
        created_at=row.created_at,
        updated_at=row.updated_at,
        history=[OrderTransition(status=h.to_status, at=h.at, reason=h.reason) for h in history],  # type: ignore[arg-type]
    )


@dataclass
class Placing:
    """A checkout under way: what its order will be once its lines are reserved and its intent exists."""

    order_id: str
    tenant: str
    lines: list[OrderLine]
    currency: str
    reservation: str
    user_id: str | None = None
    email: str | None = None
    cart_id: str | None = None
    idempotency_key: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    reserved_at: datetime | None = None
    reserved_until: datetime | None = None
    intent_at: datetime | None = None
    traceparent: str | None = field(default_factory=tracing.current_traceparent)
    """The checkout's trace, for its ``orders.created`` event (placed in a group with other checkouts')."""

    @property
    def total_cents(self) -> int:
        return total_cents(self.lines)


def place(session: Session, placings: list[tuple[Placing, IntentView | CheckoutSessionView | None]]) -> list[OrderView]:
    """Write checkouts' orders, awaiting payment (with their intent, or their checkout page; ``reserved`` while
    the intent is queued: None), with their whole histories and ``events.orders.created``.

    :class:`IntegrityError` if another order has one's Idempotency-Key. Core multi-row inserts, three
    statements however many orders (group-committed checkouts come here together): the ORM's unit of
    work cost more than the rest of a checkout's writes, and a statement per order most of the rest.
    """
    rows: list[dict[str, Any]] = []
    histories: list[dict[str, Any]] = []
    orders: list[OrderView] = []
    events: list[OrderCreated] = []
    for placing, intent in placings:
        at = placing.intent_at or utcnow()
        path = PLACED_PATH if intent is not None else PLACED_PATH[:-1]
        page = intent if isinstance(intent, CheckoutSessionView) else None
        if page is not None:
            path = (*PLACED_PATH[:-1], ("awaiting_payment", "checkout page opened"))
            intent = None
        row = OrderRow(
            id=placing.order_id, tenant=placing.tenant, status=path[-1][0], version=1,
            user_id=placing.user_id, email=placing.email, cart_id=placing.cart_id,
            idempotency_key=placing.idempotency_key, currency=placing.currency, total_cents=placing.total_cents,
            lines=json.dumps([line.model_dump() for line in placing.lines]), reservation=placing.reservation,
            reserved_until=placing.reserved_until, payment_intent_id=intent.payment_intent_id if intent else None,
            client_secret=intent.client_secret if intent else None,
            payment_status=(page or intent).status if (page or intent) else QUEUED, payment_error=None,
            refunded_cents=0, checkout_session_id=page.checkout_session_id if page else None,
            checkout_url=page.url if page else None,
            created_at=placing.started_at, updated_at=at, refund_reason=None, give_back=None, claimed_by=None,
            claimed_until=None,
        )
        rows.append({c.key: getattr(row, c.key) for c in _ORDER_COLUMNS})
        times = (placing.started_at, placing.reserved_at or at, at)[:len(path)]
        history = [
            {"order_id": row.id, "from_status": came_from, "to_status": status, "reason": reason, "at": when}
            for (status, reason), came_from, when in zip(path, _PLACED_FROM[:len(path)], times, strict=True)
        ]
        histories.extend(history)
        orders.append(view(row, [OrderTransitionRow(**h) for h in history]))
        events.append(OrderCreated(tenant=row.tenant, order=orders[-1]))
    session.execute(_INSERT_ORDER, rows)
    session.execute(_INSERT_TRANSITIONS, histories)
    record_events(session, events, [placing.traceparent for placing, _ in placings])
    return orders


_PLACED_FROM = [None, *(status for status, _ in PLACED_PATH[:-1])]  # each step of PLACED_PATH comes from the one before
_ORDER_COLUMNS = [c for c in OrderRow.__table__.columns if c.key != "seq"]
_INSERT_ORDER = insert(OrderRow.__table__)
_INSERT_TRANSITIONS = insert(OrderTransitionRow.__table__)


def load(session: Session, order_id: str) -> OrderRow | None:
    return session.scalar(select(OrderRow).where(OrderRow.id == order_id))


def load_view(session: Session, order_id: str, *, with_history: bool = True) -> OrderView:
    row = load(session, order_id)
    if row is None:
        raise NotFound(f"no order {order_id}", order_id=order_id)
    return view(row, history(session, order_id) if with_history else ())


def history(session: Session, order_id: str) -> list[OrderTransitionRow]:
    query = select(OrderTransitionRow).where(OrderTransitionRow.order_id == order_id).order_by(OrderTransitionRow.id)
    return list(session.scalars(query))


ID_BY_IDEMPOTENCY_KEY = select(OrderRow.id).where(OrderRow.idempotency_key == bindparam("key"))
"""The order an Idempotency-Key placed: ``db.lookup(ID_BY_IDEMPOTENCY_KEY, key=...)``."""
OPEN_ORDER_OF_CART = select(OrderRow.id).where(OrderRow.cart_id == bindparam("cart_id"), OPEN)
"""The cart's order still open for payment (one at most): ``db.lookup(OPEN_ORDER_OF_CART, cart_id=...)``."""


def by_payment_intent(session: Session, payment_intent_id: str) -> OrderRow | None:
    return session.scalar(select(OrderRow).where(OrderRow.payment_intent_id == payment_intent_id))


def claim(session: Session, order_id: str, worker: str, now: datetime, until: datetime) -> bool:
    """Take the order for one saga step (``worker`` holds it until ``until`` at most); False if another does."""
    free = or_(OrderRow.claimed_until.is_(None), OrderRow.claimed_until < now, OrderRow.claimed_by == worker)
    done = session.execute(
        update(OrderRow)
        .where(OrderRow.id == order_id, free)
        .values(claimed_by=worker, claimed_until=until)
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def release_claim(session: Session, order_id: str, worker: str) -> None:
    session.execute(
        update(OrderRow)
        .where(OrderRow.id == order_id, OrderRow.claimed_by == worker)
        .values(claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def change(session: Session, row: OrderRow, **fields: Any) -> OrderRow:
    """Change fields of the order as read (``row.version``), without a transition; :class:`Stale` if it moved."""
    at = utcnow()
    done = session.execute(
        update(OrderRow)
        .where(OrderRow.id == row.id, OrderRow.version == row.version)
        .values(**fields, version=row.version + 1, updated_at=at)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise Stale(row.id)
    # The row as written, without reading it back: detached first, so these assignments write nothing.
    if row in session:
        session.expunge(row)
    for name, value in {**fields, "version": row.version + 1, "updated_at": at}.items():
        setattr(row, name, value)
    return row


def note(session: Session, row: OrderRow, reason: str, **fields: Any) -> OrderView:
    """A line in the order's history that keeps its status (a partial refund), with a change of ``fields``."""
    fresh = change(session, row, **fields)
    session.add(OrderTransitionRow(order_id=row.id, from_status=row.status, to_status=row.status, reason=reason,
                                   at=fresh.updated_at))
    return view(fresh)


def move(
    session: Session, row: OrderRow, to: OrderStatus, reason: str | None = None, **fields: Any
) -> tuple[OrderRow, OrderView]:
    """Move the order as read to ``to`` (refused if the state machine forbids it; :class:`Stale` if it moved
    meanwhile), with its transition row and ``events.orders.status_changed`` (+ ``events.orders.paid``)."""
    previous: OrderStatus = row.status  # type: ignore[assignment]
    try:
        check_transition(previous, to)
    except IllegalTransition:
        log.warning("order %s: refused to move from %s to %s (%s)", row.id, previous, to, reason)
        raise
    fresh = change(session, row, status=to, **fields)
    session.add(
        OrderTransitionRow(order_id=row.id, from_status=previous, to_status=to, reason=reason, at=fresh.updated_at)
    )
    order = view(fresh)
    events: list[Message] = [OrderStatusChanged(tenant=fresh.tenant, order=order, previous=previous, reason=reason)]
    if to == "paid" and previous != "disputed":  # a dispute won: paid once already
        events.append(OrderPaid(tenant=fresh.tenant, order=order))
    record_events(session, events)
    return fresh, order


def page(session: Session, *, user_id: str | None, status: str | None, limit: int, cursor: str | None) -> OrderPage:
    """Newest first; ``cursor`` is the last order id of the previous page."""
    query = select(OrderRow)
    if user_id is not None:
        query = query.where(OrderRow.user_id == user_id)
    if status is not None:
        query = query.where(OrderRow.status == status)
    if cursor is not None:
        after = session.scalar(select(OrderRow.seq).where(OrderRow.id == cursor))
        if after is None:
            # the collection exists; a cursor naming no order is a bad value, as the catalog's forged cursor is
            raise Invalid(f"no order {cursor} to continue after", fields=[{"field": "cursor", "message": "unknown"}])
        query = query.where(OrderRow.seq < after)
    rows = list(session.scalars(query.order_by(OrderRow.seq.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return OrderPage(items=[view(r) for r in rows], next_cursor=rows[-1].id if more and rows else None)


CANCEL_PENDING = "cancel_pending"
QUEUED = "queued"  # the order's intent waits its turn at Stripe's rate limit (payments' queue)
REFUNDING = "refunding"
UNKNOWN_TO_PROVIDER = "unknown_to_provider"  # the provider has no such payment: the sweeper gave up on it

_LIMIT = bindparam("limit", type_=Integer)
_OVERDUE = (select(OrderRow.id)
            .where(OrderRow.status.in_(sorted(HOLDS_STOCK)), OrderRow.reserved_until < bindparam("now"))
            .order_by(OrderRow.reserved_until).limit(_LIMIT))
_STALLED = (select(OrderRow.id)
            .where(OrderRow.status.in_(RESUMABLE), OrderRow.updated_at < bindparam("before"),
                   not_(and_(func.coalesce(OrderRow.payment_status, "") == QUEUED,
                             OrderRow.updated_at >= bindparam("queued_before"))))
            .order_by(OrderRow.updated_at).limit(_LIMIT))
_INTENTS_TO_CANCEL = (select(OrderRow.id)
                      .where(OrderRow.status.in_(("cancelled", "expired")), OrderRow.payment_status == CANCEL_PENDING,
                             OrderRow.id > bindparam("after"))
                      .order_by(OrderRow.id).limit(_LIMIT))
_REFUNDS_LEFT = (select(OrderRow.id)
                 .where(OrderRow.payment_status == REFUNDING, OrderRow.updated_at < bindparam("before"))
                 .order_by(OrderRow.updated_at).limit(_LIMIT))
_NEXT_DUE = select(func.min(OrderRow.reserved_until)).where(OrderRow.status.in_(sorted(HOLDS_STOCK)))


@dataclass(frozen=True)
class ToSweep:
    """What a sweep of one tenant's orders finds (each list a hundred at most, ids)."""

    overdue: list[str]
    """Still holding stock, unpaid, their reservation run out (soonest first)."""
    stalled: list[str]
    """Left mid-saga by a crash: in a resumable status, unchanged since ``stalled_before`` (an order whose intent
    is queued, which payments announces when made, only once unchanged since ``queued_before``)."""
    uncancelled: list[str]
    """Ended unpaid while their PaymentIntent could not be cancelled (tried again), by id after ``cancels_after``:
    the sweeper goes round them all, so a hundred failing ones can't hide the rest."""
    refunding: list[str]
    """A refund decided and not moved since ``stalled_before``."""
    due: datetime | None
    """When the next order still holding stock runs out of reservation, if any does."""

    def __bool__(self) -> bool:
        return bool(self.overdue or self.stalled or self.uncancelled or self.refunding)


def to_sweep(where: Session | Statements, *, now: datetime, stalled_before: datetime, queued_before: datetime,
             cancels_after: str = "", limit: int = 100) -> ToSweep:
    """What the sweeper has to do in one tenant's orders: five indexed reads, prebuilt (:mod:`cartwheel.statements`)
    so they run on a SQLite file's own connection, a closed tenant's too (:func:`~cartwheel.statements.read_file`)."""
    statements = statements_of(where)

    def ids(stmt: Select[Any], **params: Any) -> list[str]:
        return [found for found, in statements.rows(stmt, {**params, "limit": limit})]

    [(due,)] = statements.rows(_NEXT_DUE, {})
    return ToSweep(overdue=ids(_OVERDUE, now=now),
                   stalled=ids(_STALLED, before=stalled_before, queued_before=queued_before),
                   uncancelled=ids(_INTENTS_TO_CANCEL, after=cancels_after),
                   refunding=ids(_REFUNDS_LEFT, before=stalled_before), due=due)
