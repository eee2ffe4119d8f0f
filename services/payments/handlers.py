"""Payment requests: create, confirm, cancel and refund an order's PaymentIntent.

Each is safe to retry: a stored intent or refund answers without a second Stripe call, and what
Stripe's answer changed is written with the event it causes (see :mod:`services.payments.ledger`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from cartwheel.contracts.payments import (
    CancelIntent,
    ConfirmIntent,
    CreateIntent,
    IntentQueued,
    IntentRequested,
    RefundPayment,
)
from cartwheel.errors import DomainError
from cartwheel.keyedlock import KeyedLocks
from cartwheel.outbox import record_event
from cartwheel.service import Service
from services.payments import domain, ledger, store
from services.payments.accounts import StripeAccounts
from services.payments.models import IntentRow
from services.payments.pacing import CHECKOUT
from services.payments.stripe_api import Busy, StripePayments, provider_unavailable


class PaymentHandlers:
    def __init__(self, service: Service, accounts: StripeAccounts, intents: KeyedLocks) -> None:
        self.service = service
        self.db = service.db
        self.accounts = accounts
        self.intents = intents  # a call's answer and a webhook's reading of one intent are written in turn

    async def create_intent(self, cmd: CreateIntent) -> dict[str, Any]:
        """The order's intent, made now if its turn at Stripe's rate limit comes within the checkout's wait;
        else queued (answered :class:`IntentQueued`; the intent follows as an event)."""
        try:
            row = await self.intent_for(cmd, wait=self.service.settings.stripe_checkout_wait_seconds)
        except Busy:
            ask = IntentRequested(tenant=cmd.tenant, order_id=cmd.order_id, amount_cents=cmd.amount_cents,
                                  currency=cmd.currency, email=cmd.email, not_after=cmd.not_after)
            await self.db.run(lambda s: record_event(s, ask))
            self.service.notify_outbox()
            return IntentQueued(order_id=cmd.order_id).model_dump(mode="json")
        return store.to_view(row).model_dump(mode="json")

    async def intent_for(self, cmd: CreateIntent | IntentRequested, wait: float | None,
                         priority: int = CHECKOUT) -> IntentRow:
        """The order's intent: the one it has (a retry, a queued twin), else a new one (:class:`Busy` if its turn
        does not come within ``wait`` seconds); ``conflict`` if the order's amount is not the intent's."""
        known = await self.db.lookup(store.INTENT_OF_ORDER, order_id=cmd.order_id)  # a retry: no second intent
        if known is not None:
            row = await self.db.read(lambda s: s.get(IntentRow, known))
        else:
            key = domain.intent_key(cmd.order_id)
            made = domain.snapshot(await (await self.provider()).create_intent(
                cmd.order_id, cmd.tenant, cmd.amount_cents, cmd.currency, key, email=cmd.email, wait=wait,
                priority=priority))
            row = await self.db.run_batched(store.keep_first_intents, (made, cmd.tenant))  # with concurrent ones
        assert row is not None
        if (row.amount_cents, row.currency) != (cmd.amount_cents, cmd.currency):
            raise DomainError(
                f"order {cmd.order_id!r} already has a payment of {row.amount_cents} {row.currency}",
                code="conflict",
                payment_intent_id=row.id,
            )
        return row

    async def confirm_intent(self, cmd: ConfirmIntent) -> dict[str, Any]:
        row = await self.db.read(lambda s: store.intent_of_order(s, cmd.payment_intent_id, cmd.order_id))
        if row.status in domain.FINISHED:
            return store.to_view(row).model_dump(mode="json")
        async with self.intents.hold(row.id):
            try:
                intent = await (await self.provider()).confirm_intent(row.id, cmd.payment_method, f"confirm-{cmd.id}",
                                                              cmd.return_url)
            except DomainError as refusal:
                intent = await self._finished_or_raise(row.id, refusal)
            return await self._settle(intent, "confirm")

    async def cancel_intent(self, cmd: CancelIntent) -> dict[str, Any]:
        row = await self.db.read(lambda s: store.intent_of_order(s, cmd.payment_intent_id, cmd.order_id))
        if row.status in domain.FINISHED:
            return store.to_view(row).model_dump(mode="json")
        async with self.intents.hold(row.id):
            try:
                intent = await (await self.provider()).cancel_intent(row.id)
            except DomainError as refusal:
                intent = await self._finished_or_raise(row.id, refusal)
            return await self._settle(intent, "cancel")

    async def refund_payment(self, cmd: RefundPayment) -> dict[str, Any]:
        done = await self.db.read(lambda s: store.refund_for_order(s, cmd.order_id))
        if done is not None:
            return store.refund_reply(done)
        row = await self.db.read(lambda s: store.intent_of_order(s, cmd.payment_intent_id, cmd.order_id))
        if row.status != "succeeded":  # our copy may be behind (a webhook not here yet): ask
            current = await (await self.provider()).retrieve_intent(row.id)
            if current["status"] != "succeeded":
                raise DomainError(
                    f"payment {row.id} has not succeeded ({current['status']}): nothing to refund",
                    code="conflict",
                    payment_intent_id=row.id,
                    status=current["status"],
                )
            await self._settle(current, "retrieve")
        refund = await (await self.provider()).refund(row.id, cmd.order_id, cmd.reason, domain.refund_key(cmd.order_id))

        def record(session: Session) -> dict[str, Any]:
            kept = store.insert_refund(session, refund, cmd.order_id, row.id)
            intent = store.lock_intent(session, row.id)
            if intent is not None and kept.status in ("succeeded", "pending"):
                ledger.settle_refund(session, intent, intent.amount_cents, f"refund:{kept.id}")  # a full refund
            return store.refund_reply(kept)

        reply = await self.db.run(record)
        self.service.notify_outbox()
        return reply

    async def _settle(self, intent: dict[str, Any], action: str) -> dict[str, Any]:
        snap = domain.snapshot(intent)
        row = await self.db.run(lambda s: ledger.settle(s, snap, f"{action}:{snap.id}:{snap.status}"))
        self.service.notify_outbox()
        assert row is not None, "the intent's row exists"
        return store.to_view(row).model_dump(mode="json")

    async def _finished_or_raise(self, intent_id: str, refusal: DomainError) -> dict[str, Any]:
        """Stripe refused because the intent finished meanwhile (a retry, a buyer's 3-D Secure): answer with it."""
        if refusal.code != "conflict":
            raise refusal
        current = await (await self.provider()).retrieve_intent(intent_id)
        if current["status"] not in domain.FINISHED:
            raise refusal
        return current

    async def provider(self) -> StripePayments:
        """The Stripe account of the tenant in hand (its own, or the installation's)."""
        api = (await self.accounts.current()).api
        if api is None:
            raise provider_unavailable(
                "payments are not configured: no Stripe secret key (CARTWHEEL_STRIPE_SECRET_KEY)"
            )
        return api
