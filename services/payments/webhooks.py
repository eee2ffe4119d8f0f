"""Stripe's webhooks: verified, each Stripe event recorded once with the payment events it causes.

Events may come in any order and any number of times: a replay finds its id recorded and
changes nothing; an intent's event is read as the intent's state at Stripe now, retrieved, so a
late report of an earlier state changes nothing (see ledger); a refund reported before the
payment's success announces the success first. Only intents this shop created count: an event
for any other (another system on the same Stripe account, a hand-made one with an order id in
its metadata) is recorded and ignored.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from cartwheel.contracts.payments import StripeWebhook, WebhookOutcome
from cartwheel.errors import DomainError, NotFound
from cartwheel.keyedlock import KeyedLocks
from cartwheel.service import Service
from cartwheel.tenants import context as tenant_context
from services.payments import domain, ledger, store
from services.payments.accounts import StripeAccounts
from services.payments.checkout import paid_intent
from services.payments.domain import IntentSnapshot
from services.payments.stripe_api import PaymentMetrics, provider_unavailable, verify_webhook

log = logging.getLogger(__name__)

UNVERIFIED = "unverified"  # the type of an event whose signature failed: its body can't be trusted to say


class WebhookHandlers:
    def __init__(self, service: Service, accounts: StripeAccounts, intents: KeyedLocks,
                 metrics: PaymentMetrics | None = None) -> None:
        self.service = service
        self.metrics = metrics
        self.db = service.db
        self.accounts = accounts
        self.intents = intents

    async def stripe_webhook(self, msg: StripeWebhook) -> dict[str, Any]:
        """Verify (with the tenant's account's signing secret), record and apply one event; counted by type and
        result."""
        account = await self.accounts.current()
        try:
            event = verify_webhook(msg.payload, msg.signature, account.webhook_secret)
        except DomainError:
            self._count(UNVERIFIED, "invalid_signature")
            raise
        try:
            tenant = await self._whose(event) if account is self.accounts.installation else None
            if tenant is None:
                outcome, result = await self._receive(event)
            else:
                with tenant_context.serving(tenant):
                    outcome, result = await self._receive(event)
        except Exception:
            self._count(event["type"], "failed")
            raise
        self._count(event["type"], result)
        return outcome

    async def _whose(self, event: dict[str, Any]) -> str | None:
        """The tenant an event of the installation's Stripe account is about, when it is another than the one
        whose host received it: every tenant without an account of its own is paid into the installation's, and
        Stripe sends all their events to one endpoint. The payment's ``metadata.tenant`` (set when this shop made
        it: the signature says the event is the account's) names it; a charge's, refund's or dispute's event is
        about an intent, asked of Stripe for its metadata. None: the receiving tenant's, as before."""
        here = tenant_context.current(self.service.settings.tenant)
        subject = (event.get("data") or {}).get("object") or {}
        named = (subject.get("metadata") or {}).get("tenant")
        if not named and event["type"] not in domain.INTENT_EVENTS and event["type"] not in domain.CHECKOUT_EVENTS:
            intent_id, api = domain.intent_of(event["type"], subject), self.accounts.installation.api
            if intent_id and api is not None:
                try:
                    named = domain.snapshot(await api.retrieve_intent(intent_id)).tenant
                except DomainError:
                    named = None  # not the account's intent: recorded and ignored where it arrived
        if not isinstance(named, str) or named == here or not self.service.tenants.registered(named):
            return None
        with tenant_context.serving(named):  # only a tenant paid into the installation's account
            if (await self.accounts.current()) is not self.accounts.installation:
                return None
        return named

    def _count(self, kind: str, result: str) -> None:
        if self.metrics:
            self.metrics.webhooks.labels(kind if kind in domain.KNOWN_EVENTS or kind == UNVERIFIED else "other",
                                         result).inc()

    async def _receive(self, event: dict[str, Any]) -> tuple[dict[str, Any], str]:
        outcome = WebhookOutcome(event_id=event["id"], type=event["type"], duplicate=True)
        if await self.db.read(lambda s: store.stripe_event_seen(s, outcome.event_id)):
            return outcome.model_dump(mode="json"), "duplicate"
        subject = (event.get("data") or {}).get("object") or {}
        # One intent's reports one at a time, read and written: two read out of order and written in the
        # other order would leave the older state (a failure over the buyer's 3-D Secure step).
        async with self.intents.hold(domain.intent_of(event["type"], subject) or event["id"]):
            if event["type"] in domain.CHECKOUT_EVENTS:
                record = await self._checkout_report(event, subject)
            else:
                snap, refunded = await self._report(event["type"], subject)
                record = functools.partial(self._record, event=event, snap=snap, refunded=refunded)
            try:
                applied = await self.db.run(record)
            except store.AlreadyRecorded:  # a concurrent delivery of the same event won
                return outcome.model_dump(mode="json"), "duplicate"
        self.service.notify_outbox()
        log.info("stripe event %s (%s) recorded", outcome.event_id, outcome.type)
        return outcome.model_copy(update={"duplicate": False}).model_dump(mode="json"), \
            "applied" if applied else "ignored"

    async def _report(self, kind: str, subject: dict[str, Any]) -> tuple[IntentSnapshot | None, int | None]:
        """What the event says about which intent, and the total refunded if it is a refund."""
        if kind in domain.INTENT_EVENTS:
            return await self._current(domain.intent_of(kind, subject)), None
        if kind == domain.CHARGE_REFUNDED:
            snap = domain.refunded_intent(subject)
            refunded = domain.stripe_amount(subject, "amount_refunded") or 0
            return (snap if snap and await self._ours(snap.id) else None), refunded
        return None, None

    async def _checkout_report(self, event: dict[str, Any], subject: dict[str, Any]) -> Callable[[Session], bool]:
        """How to record a checkout page's event: with the session (and the intent it made) as Stripe has them
        now, for a session of ours; else recorded and ignored."""
        session_id = subject.get("id")
        if not isinstance(session_id, str) or not await self.db.lookup(store.SESSION_ORDER, session_id=session_id):
            log.info("stripe reports on checkout page %r, which this shop did not open: recorded, ignored",
                     session_id)
            return functools.partial(self._record, event=event, snap=None, refunded=None)
        stripe = (await self.accounts.current()).api
        if stripe is None:  # not recorded: Stripe delivers it again
            raise provider_unavailable("no Stripe secret key: cannot read the checkout page's current state")
        checkout = await stripe.retrieve_checkout_session(session_id)
        paid = await paid_intent(stripe, checkout)

        def record(session: Session) -> bool:
            store.record_stripe_event(session, event["id"], event["type"], paid.id if paid else None)
            return ledger.checkout_changed(session, checkout, paid, event["id"])

        return record

    async def _current(self, intent_id: Any) -> IntentSnapshot | None:
        """The intent as Stripe has it now, not as the event says: events come late, twice and out of order
        (a failure reported after the buyer moved on to 3-D Secure must not fail the order). None for an
        intent this shop did not create: its event is recorded and changes nothing."""
        if not await self._ours(intent_id):
            return None
        stripe = (await self.accounts.current()).api
        if stripe is None:  # not recorded: Stripe delivers it again
            raise provider_unavailable("no Stripe secret key: cannot read the payment's current state")
        try:
            return domain.snapshot(await stripe.retrieve_intent(intent_id))
        except NotFound:  # ours, yet Stripe says no such intent: a key of another account or mode? Not recorded
            raise provider_unavailable(f"Stripe has no payment {intent_id}, which this shop created: "
                                       "is the secret key of the account and mode that made it?") from None

    async def _ours(self, intent_id: Any) -> bool:
        """Whether this shop created the intent (its row exists): the only intents whose events count."""
        if isinstance(intent_id, str) and await self.db.lookup(store.ORDER_OF_INTENT, intent_id=intent_id):
            return True
        log.info("stripe reports on payment %r, which this shop did not create: recorded, ignored", intent_id)
        return False

    @staticmethod
    def _record(session: Session, *, event: dict[str, Any], snap: IntentSnapshot | None, refunded: int | None) -> bool:
        """Record the event and apply it; whether it changed a payment of this shop's (else it is ignored)."""
        kind, subject = event["type"], (event.get("data") or {}).get("object") or {}
        about = domain.intent_of(kind, subject) if kind in domain.DISPUTE_EVENTS | domain.REFUND_EVENTS else None
        store.record_stripe_event(session, event["id"], kind, snap.id if snap else about)
        if about is not None:
            row = store.lock_intent(session, about)
            if row is None:
                log.info("stripe event %s (%s): payment %s is not one this shop created", event["id"], kind, about)
            elif kind in domain.DISPUTE_EVENTS:
                ledger.dispute(session, row, kind, subject, event["id"])
            else:
                ledger.refund_changed(session, row, subject, event["id"])
            return row is not None
        if snap is None:
            return False
        row = ledger.settle(session, snap, event["id"])
        if row is None:
            log.warning("stripe event %s: payment %s belongs to no order of ours", event["id"], snap.id)
        elif refunded is not None:
            ledger.settle_refund(session, row, refunded, event["id"])
        return row is not None
