"""What Stripe said about an intent, written down; each newly reached outcome announced once, in the same transaction.

Our own calls' answers (confirm, cancel, refund) and Stripe's webhooks go through here alike,
so whichever arrives first moves the order and the other finds nothing new to say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from cartwheel.contracts.base import utcnow
from cartwheel.contracts.payments import (
    CheckoutExpired,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentEvent,
    PaymentRefunded,
    PaymentRefundFailed,
)
from cartwheel.outbox import record_event
from services.payments import domain, store
from services.payments.domain import IntentSnapshot, Outcome
from services.payments.models import IntentRow


def settle(session: Session, snap: IntentSnapshot, source: str) -> IntentRow | None:
    """Store ``snap`` (``source`` names what told us); None when the intent is not one this shop created."""
    row = store.lock_intent(session, snap.id)
    if row is None:
        return None
    before = domain.outcome(row.status, row.last_error)
    if domain.accepts(row.status, snap.status):
        store.update_intent(row, snap)
    announce(session, row, domain.newly_reached(before, domain.outcome(row.status, row.last_error)), source)
    return row


def checkout_changed(session: Session, checkout: Mapping[str, Any], paid: IntentSnapshot | None,
                     source: str) -> bool:
    """A Checkout Session of ours moved at Stripe (``checkout``: the session as Stripe says now); ``paid``: the
    intent it made, when the buyer paid. A closed page is announced once; a paid one settles its order's
    intent (recorded first: Stripe made it, not we). False when the session is not ours."""
    row = store.lock_session(session, str(checkout.get("id")))
    if row is None:
        return False
    before, status = row.status, str(checkout.get("status") or row.status)
    if before != "open":
        status = before  # complete and expired are final
    row.status, row.updated_at = status, utcnow()
    if status != "open":
        row.url = None
    if paid is not None:
        row.payment_intent_id = paid.id
        snap = dataclasses.replace(paid, order_id=paid.order_id or row.order_id, tenant=paid.tenant or row.tenant)
        made = dataclasses.replace(snap, status="requires_payment_method", last_error=None, amount_received=None)
        store.insert_intent(session, made, row.tenant)  # as it was made, so what it reached is announced
        settle(session, snap, source)
    elif status == "expired" and before == "open":
        record_event(session, CheckoutExpired(tenant=row.tenant, order_id=row.order_id, checkout_session_id=row.id))
    return True


def announce(session: Session, row: IntentRow, kind: Outcome | None, source: str) -> None:
    """Record the event of a newly reached outcome; a success says what Stripe took in, for orders to check."""
    if kind is None:
        return
    details: dict[str, Any] = {}
    if kind == "failed":
        details["reason"] = row.last_error
    elif kind == "succeeded":
        details |= {"amount_received_cents": row.received_cents, "currency_received": row.received_currency}
    record_event(session, _event(domain.EVENT_BY_OUTCOME[kind], row, source, **details))


def settle_refund(session: Session, row: IntentRow, refunded_cents: int, source: str) -> None:
    """Announce a refund when more of the intent is refunded than we knew."""
    total = min(refunded_cents, row.amount_cents)
    if total <= row.refunded_cents:
        return
    row.refunded_cents = total
    row.updated_at = utcnow()
    record_event(session, _event(PaymentRefunded, row, source, amount_refunded_cents=total))


def refund_changed(session: Session, row: IntentRow, refund: Mapping[str, Any], source: str) -> None:
    """A refund of the intent's payment moved at Stripe; one that failed (or was cancelled) after it had
    counted gives its amount back to what is still paid, and is announced."""
    refund_id, status = str(refund.get("id") or ""), str(refund.get("status") or "")
    amount = domain.stripe_amount(refund, "amount") or 0
    kept = store.refund_by_id(session, refund_id)
    before = kept.status if kept is not None else "succeeded"  # one made elsewhere (the dashboard) had counted
    if kept is not None:
        kept.status = status
    if status not in domain.REFUND_LOST or before in domain.REFUND_LOST:
        return
    row.refunded_cents = max(0, row.refunded_cents - amount)
    row.updated_at = utcnow()
    reason = refund.get("failure_reason") or status
    record_event(session, _event(PaymentRefundFailed, row, source, refund_id=refund_id,
                                 amount_not_refunded_cents=amount, reason=str(reason)))


def dispute(session: Session, row: IntentRow, kind: str, dispute: Mapping[str, Any], source: str) -> None:
    """Announce a dispute of the intent's payment opened or closed (``kind``: Stripe's event type)."""
    dispute_id = str(dispute.get("id") or "")
    if kind == domain.DISPUTE_CREATED:
        amount = domain.stripe_amount(dispute, "amount") or row.amount_cents
        record_event(session, _event(PaymentDisputed, row, source, dispute_id=dispute_id,
                                     reason=dispute.get("reason"), amount_disputed_cents=amount))
    else:
        status = str(dispute.get("status") or "")
        record_event(session, _event(PaymentDisputeClosed, row, source, dispute_id=dispute_id, status=status,
                                     won=status in domain.DISPUTE_WON))


def _event(kind: type[PaymentEvent], row: IntentRow, source: str, **details: Any) -> PaymentEvent:
    return kind(
        tenant=row.tenant,
        order_id=row.order_id,
        payment_intent_id=row.id,
        stripe_event_id=source,
        amount_cents=row.amount_cents,
        currency=row.currency,
        **details,
    )
