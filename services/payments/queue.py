"""Intents queued while Stripe's rate limit was fully used, created as it lets them through.

The queue is payments' own durable consumer of :class:`IntentRequested` on the EVENTS stream:
nothing is lost if the process dies, several replicas share it, and a call Stripe cannot take
now comes back later (the consumer's redelivery). Each queued intent is announced with
:class:`PaymentIntentCreated`, or :class:`PaymentNotStarted` when Stripe refuses it for good.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cartwheel.contracts.base import utcnow
from cartwheel.contracts.payments import IntentRequested, PaymentIntentCreated, PaymentNotStarted
from cartwheel.errors import DomainError
from cartwheel.outbox import record_event
from services.payments.handlers import PaymentHandlers
from services.payments.models import IntentRow
from services.payments.pacing import BACKGROUND
from services.payments.stripe_api import Busy

WORKERS = 64  # queued intents in flight per replica: Stripe's ~0.3 s per create times the rate, with room
IN_FLIGHT = 64  # delivered and not yet acknowledged, all replicas together; the rest wait in the stream, so a
# delivered one is never kept waiting long enough to be delivered again (to another worker: a second call)
ACK_WAIT_S = 600.0  # ... and if it is (Stripe answering 429 again and again), it is not sent twice meanwhile
COME_BACK = frozenset({"payment_provider_unavailable", "payment_provider_busy"})


class IntentQueue:
    def __init__(self, payments: PaymentHandlers) -> None:
        self.payments = payments
        self.service = payments.service

    async def create_queued(self, ask: IntentRequested) -> None:
        """Create the queued intent in its turn (behind the buyers' calls) and announce it; not once its order can
        no longer be paid (its reservation ended while it waited)."""
        left = None if ask.not_after is None else (ask.not_after - utcnow()).total_seconds()
        try:
            if left is not None and left <= 0:
                raise DomainError("its order's reservation ended before its turn came", code="order_closed")
            row = await self.payments.intent_for(ask, wait=left, priority=BACKGROUND)
        except DomainError as refusal:
            if isinstance(refusal, Busy) and ask.not_after is not None and utcnow() >= ask.not_after:
                refusal = DomainError("its order's reservation ended before its turn came", code="order_closed")
            elif refusal.code in COME_BACK:
                raise  # the consumer delivers it again later
            not_started = PaymentNotStarted(tenant=ask.tenant, order_id=ask.order_id, reason=refusal.message)
            await self.service.db.run(lambda s: record_event(s, not_started))
        else:
            await self.service.db.run(lambda s: announce_created(s, row))
        self.service.notify_outbox()


def announce_created(session: Session, row: IntentRow) -> None:
    record_event(session, PaymentIntentCreated(
        tenant=row.tenant, order_id=row.order_id, payment_intent_id=row.id, stripe_event_id=f"create:{row.id}",
        amount_cents=row.amount_cents, currency=row.currency, client_secret=row.client_secret,
        status=row.status))  # type: ignore[arg-type]
