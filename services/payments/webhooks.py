"""Stripe's webhooks: verified, each Stripe event recorded once with the payment events it causes.

Events may come in any order and any number of times: a replay finds its id recorded and
changes nothing; a report of an earlier state than we know changes nothing (see ledger);
a refund reported before the payment's success announces the success first.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from cartwheel.contracts.payments import StripeWebhook, WebhookOutcome
from cartwheel.errors import NotFound
from cartwheel.service import Service
from services.payments import domain, ledger, store
from services.payments.domain import IntentSnapshot
from services.payments.models import IntentRow
from services.payments.stripe_api import StripePayments, provider_unavailable, verify_webhook

log = logging.getLogger(__name__)


class WebhookHandlers:
    def __init__(self, service: Service, stripe: StripePayments | None, secret: str | None) -> None:
        self.service = service
        self.db = service.db
        self.stripe = stripe
        self.secret = secret

    async def stripe_webhook(self, msg: StripeWebhook) -> dict[str, Any]:
        event = verify_webhook(msg.payload, msg.signature, self.secret)
        outcome = WebhookOutcome(event_id=event["id"], type=event["type"], duplicate=True)
        if await self.db.read(lambda s: store.stripe_event_seen(s, outcome.event_id)):
            return outcome.model_dump(mode="json")
        subject = (event.get("data") or {}).get("object") or {}
        snap, refunded = await self._report(event["type"], subject)
        try:
            await self.db.run(lambda s: self._record(s, event, snap, refunded, msg.tenant))
        except store.AlreadyRecorded:  # a concurrent delivery of the same event won
            return outcome.model_dump(mode="json")
        self.service.notify_outbox()
        log.info("stripe event %s (%s) recorded", outcome.event_id, outcome.type)
        return outcome.model_copy(update={"duplicate": False}).model_dump(mode="json")

    async def _report(self, kind: str, subject: dict[str, Any]) -> tuple[IntentSnapshot | None, int | None]:
        """What the event says about which intent, and the total refunded if it is a refund."""
        if kind in domain.INTENT_EVENTS:
            return domain.snapshot(subject, failed=kind == "payment_intent.payment_failed"), None
        if kind == domain.CHARGE_REFUNDED:
            return await self._refunded_intent(subject), int(subject.get("amount_refunded") or 0)
        return None, None

    async def _refunded_intent(self, charge: dict[str, Any]) -> IntentSnapshot | None:
        """The charge's intent; its order from our row, the charge's metadata, or else the intent at Stripe."""
        snap = domain.refunded_intent(charge)
        if snap is None or snap.order_id or await self.db.read(lambda s: s.get(IntentRow, snap.id)):
            return snap
        if self.stripe is None:  # not recorded: Stripe delivers it again
            raise provider_unavailable("no Stripe secret key: cannot look up the refunded payment's order")
        try:
            return domain.snapshot(await self.stripe.retrieve_intent(snap.id))
        except NotFound:
            return snap

    @staticmethod
    def _record(
        session: Session, event: dict[str, Any], snap: IntentSnapshot | None, refunded: int | None, tenant: str
    ) -> None:
        store.record_stripe_event(session, event["id"], event["type"], snap.id if snap else None)
        if snap is None:
            return
        row = ledger.settle(session, snap, event["id"], tenant)
        if row is None:
            log.warning("stripe event %s: payment %s belongs to no order of ours", event["id"], snap.id)
        elif refunded is not None:
            ledger.settle_refund(session, row, refunded, event["id"])
