"""Payments queries; each takes the caller's Session (one transaction per request or Stripe event)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cartwheel.contracts.base import utcnow
from cartwheel.contracts.payments import CheckoutSessionView, IntentView
from cartwheel.errors import NotFound
from services.payments import domain
from services.payments.domain import IntentSnapshot
from services.payments.models import CheckoutSessionRow, IntentRow, RefundRow, StripeEventRow


class AlreadyRecorded(Exception):
    """The Stripe event was recorded before (a replay): its transaction must not go on."""


def to_view(row: IntentRow) -> IntentView:
    """An intent as the shop sees it; the error only while it waits for another payment method."""
    waiting = row.status == "requires_payment_method"
    return IntentView(
        payment_intent_id=row.id,
        client_secret=row.client_secret,
        status=row.status,  # type: ignore[arg-type]
        amount_cents=row.amount_cents,
        currency=row.currency,
        last_error=row.last_error if waiting else None,
        amount_received_cents=row.received_cents,
        currency_received=row.received_currency,
    )


def refund_reply(row: RefundRow) -> dict[str, Any]:
    return {"refund_id": row.id, "status": row.status, "amount_cents": row.amount_cents}


INTENT_OF_ORDER = select(IntentRow.id).where(IntentRow.order_id == bindparam("order_id"))
"""The id of an order's intent: ``db.lookup(INTENT_OF_ORDER, order_id=...)``."""
ORDER_OF_INTENT = select(IntentRow.order_id).where(IntentRow.id == bindparam("intent_id"))
"""The order of one of our intents (None: not ours): ``db.lookup(ORDER_OF_INTENT, intent_id=...)``."""


def intent_for_order(session: Session, order_id: str) -> IntentRow | None:
    return session.scalar(select(IntentRow).where(IntentRow.order_id == order_id))


def intent_of_order(session: Session, intent_id: str, order_id: str) -> IntentRow:
    row = session.get(IntentRow, intent_id)
    if row is None or row.order_id != order_id:
        raise NotFound(f"order {order_id!r} has no payment intent {intent_id!r}", payment_intent_id=intent_id)
    return row


def lock_intent(session: Session, intent_id: str) -> IntentRow | None:
    """The intent's row, locked until commit (PostgreSQL; SQLite writers are serialised anyway)."""
    return session.scalar(select(IntentRow).where(IntentRow.id == intent_id).with_for_update())


def _insert_if_absent(session: Session, table: Any, rows: list[dict[str, Any]]) -> set[Any]:
    """Insert the rows whose unique keys are free (else a concurrent twin, or the order's other intent, has
    them): the primary keys of those inserted.

    Told by the rows RETURNING gives back, not by ``rowcount``: psycopg reports -1 for this statement,
    which read as "inserted" every time on PostgreSQL.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    # executemany with RETURNING: SQLAlchemy pages it under each database's limit on bound parameters
    return set(session.scalars(dialect.insert(table).on_conflict_do_nothing().returning(key), rows))


def insert_intent(session: Session, snap: IntentSnapshot, tenant: str) -> IntentRow | None:
    """The new row as written, or None if the order had one already."""
    return insert_intents(session, [(snap, tenant)])[0]


def insert_intents(session: Session, made: list[tuple[IntentSnapshot, str]]) -> list[IntentRow | None]:
    """The new rows as written, each None where its order had one already (one executemany for them all).

    Not read back: that was a tenth of the service's CPU when every checkout was a sale (bench ``open``).
    """
    now = utcnow()
    rows = [
        {
            "id": snap.id,
            "order_id": snap.order_id,
            "tenant": snap.tenant or tenant,
            "amount_cents": snap.amount_cents,
            "currency": snap.currency,
            "status": snap.status,
            "client_secret": snap.client_secret,
            "last_error": snap.last_error,
            "refunded_cents": 0,
            "created_at": now,
            "updated_at": now,
        }
        for snap, tenant in made
    ]
    inserted = _insert_if_absent(session, IntentRow.__table__, rows)
    written: list[IntentRow | None] = []
    for values in rows:  # twins with one id (a replayed Stripe answer): only the first was written
        written.append(IntentRow(**values) if values["id"] in inserted else None)
        inserted.discard(values["id"])
    return written


def keep_first_intents(session: Session, made: list[tuple[IntentSnapshot, str]]) -> list[IntentRow | None]:
    """Each new intent's row, or its order's intent written first by a concurrent twin."""
    rows = insert_intents(session, made)
    return [row or intent_for_order(session, snap.order_id) for row, (snap, _) in zip(rows, made, strict=True)]


def update_intent(row: IntentRow, snap: IntentSnapshot) -> None:
    row.status = snap.status
    row.last_error = snap.last_error
    if snap.status == "succeeded":
        row.received_cents, row.received_currency = domain.received(snap)
    row.client_secret = row.client_secret or snap.client_secret
    row.updated_at = utcnow()


def refund_for_order(session: Session, order_id: str) -> RefundRow | None:
    return session.scalar(select(RefundRow).where(RefundRow.order_id == order_id))


def insert_refund(session: Session, refund: dict[str, Any], order_id: str, intent_id: str) -> RefundRow:
    """Record the order's refund; a concurrent twin's row wins if it came first."""
    values = {
        "id": refund["id"],
        "order_id": order_id,
        "payment_intent_id": intent_id,
        "amount_cents": domain.stripe_amount(refund, "amount"),
        "currency": str(refund["currency"]).upper(),
        "status": str(refund["status"]),
        "created_at": utcnow(),
    }
    _insert_if_absent(session, RefundRow.__table__, [values])
    row = refund_for_order(session, order_id)
    assert row is not None
    return row


def refund_by_id(session: Session, refund_id: str) -> RefundRow | None:
    return session.get(RefundRow, refund_id, with_for_update=True)


def stripe_event_seen(session: Session, event_id: str) -> bool:
    return session.get(StripeEventRow, event_id) is not None


def record_stripe_event(session: Session, event_id: str, event_type: str, intent_id: str | None) -> None:
    """Record a Stripe event once; raises :class:`AlreadyRecorded` for a replay, even a concurrent one."""
    if stripe_event_seen(session, event_id):
        raise AlreadyRecorded(event_id)
    session.add(StripeEventRow(id=event_id, type=event_type, payment_intent_id=intent_id, received_at=utcnow()))
    try:
        session.flush()  # a concurrent twin fails here on the primary key
    except IntegrityError:
        raise AlreadyRecorded(event_id) from None


def session_view(row: CheckoutSessionRow) -> CheckoutSessionView:
    paid = row.payment_intent_id is not None and row.status == "complete"
    return CheckoutSessionView(checkout_session_id=row.id, url=row.url if row.status == "open" else None,
                               status=row.status, payment_status="paid" if paid else "unpaid",  # type: ignore[arg-type]
                               expires_at=row.expires_at, payment_intent_id=row.payment_intent_id)


def session_of_order(session: Session, order_id: str) -> CheckoutSessionRow | None:
    return session.scalar(select(CheckoutSessionRow).where(CheckoutSessionRow.order_id == order_id))


def lock_session(session: Session, session_id: str) -> CheckoutSessionRow | None:
    return session.scalar(select(CheckoutSessionRow).where(CheckoutSessionRow.id == session_id).with_for_update())


def keep_first_session(session: Session, made: dict[str, Any], order_id: str, tenant: str, amount_cents: int,
                       currency: str) -> CheckoutSessionRow:
    """Record the order's new Checkout Session; a concurrent twin's row wins if it came first."""
    now = utcnow()
    values = {"id": made["id"], "order_id": order_id, "tenant": tenant, "amount_cents": amount_cents,
              "currency": currency, "status": str(made.get("status") or "open"), "url": made.get("url"),
              "expires_at": datetime.fromtimestamp(int(made["expires_at"]), UTC), "payment_intent_id": None,
              "created_at": now, "updated_at": now}
    _insert_if_absent(session, CheckoutSessionRow.__table__, [values])
    row = session_of_order(session, order_id)
    assert row is not None
    return row


SESSION_ORDER = select(CheckoutSessionRow.order_id).where(CheckoutSessionRow.id == bindparam("session_id"))
"""The order of one of our Checkout Sessions (None: not ours): ``db.lookup(SESSION_ORDER, session_id=...)``."""
