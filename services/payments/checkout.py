"""Hosted checkout: an order's Stripe Checkout Session, opened and closed.

The buyer pays on Stripe's page, which makes the PaymentIntent; its ``checkout.session.completed``
webhook (see :mod:`services.payments.webhooks`) records that intent and settles it as any other,
and ``checkout.session.expired`` announces the page closed unpaid.
"""

from __future__ import annotations

from typing import Any

from cartwheel.contracts.payments import CreateCheckoutSession, ExpireCheckoutSession
from cartwheel.errors import DomainError, NotFound
from services.payments import domain, ledger, store
from services.payments.handlers import PaymentHandlers
from services.payments.stripe_api import StripePayments


class CheckoutHandlers:
    def __init__(self, payments: PaymentHandlers) -> None:
        self.payments = payments
        self.service = payments.service
        self.db = payments.db

    async def create_checkout(self, ask: CreateCheckoutSession) -> dict[str, Any]:
        """The order's checkout page: the one it has (a retry), else a new one in its turn at the rate limit."""
        row = await self.db.read(lambda s: store.session_of_order(s, ask.order_id))
        if row is None:
            wait = self.service.settings.stripe_checkout_wait_seconds
            made = await (await self.payments.provider()).create_checkout_session(ask, f"checkout-{ask.order_id}", wait)
            row = await self.db.run(lambda s: store.keep_first_session(s, made, ask.order_id, ask.tenant,
                                                                       ask.amount_cents, ask.currency))
        if (row.amount_cents, row.currency) != (ask.amount_cents, ask.currency):
            raise DomainError(f"order {ask.order_id!r} already has a checkout page for {row.amount_cents} "
                              f"{row.currency}", code="conflict", checkout_session_id=row.id)
        return store.session_view(row).model_dump(mode="json")

    async def expire_checkout(self, ask: ExpireCheckoutSession) -> dict[str, Any]:
        """Close the order's page; paid meanwhile, the answer says so (and the payment is settled)."""
        row = await self.db.read(lambda s: store.session_of_order(s, ask.order_id))
        if row is None or row.id != ask.checkout_session_id:
            raise NotFound(f"order {ask.order_id!r} has no checkout page {ask.checkout_session_id!r}")
        if row.status == "open":
            stripe = await self.payments.provider()
            try:
                checkout = await stripe.expire_checkout_session(row.id)
            except DomainError as refusal:  # completed (or expired) meanwhile: Stripe refuses to expire it
                if refusal.code != "conflict":
                    raise
                checkout = await stripe.retrieve_checkout_session(row.id)
            paid = await paid_intent(stripe, checkout)
            await self.db.run(lambda s: ledger.checkout_changed(s, checkout, paid, f"expire:{row.id}"))
            self.service.notify_outbox()
        row = await self.db.read(lambda s: store.session_of_order(s, ask.order_id))
        assert row is not None
        return store.session_view(row).model_dump(mode="json")


async def paid_intent(stripe: StripePayments, checkout: dict[str, Any]) -> domain.IntentSnapshot | None:
    """The intent a completed and paid session made, as Stripe has it now; None otherwise."""
    if checkout.get("status") != "complete" or checkout.get("payment_status") != "paid":
        return None
    intent_id = domain.payment_intent_of(checkout)
    if intent_id is None:
        return None
    return domain.snapshot(await stripe.retrieve_intent(intent_id))
