"""Wires the payments service: an order's PaymentIntent (create, confirm, cancel, refund) and Stripe's webhooks."""

from __future__ import annotations

from cartwheel import subjects
from cartwheel.contracts.payments import (
    CancelIntent,
    ConfirmIntent,
    CreateCheckoutSession,
    CreateIntent,
    ExpireCheckoutSession,
    IntentRequested,
    RefundPayment,
    StripeWebhook,
)
from cartwheel.keyedlock import KeyedLocks
from cartwheel.service import Service
from cartwheel.settings import Settings
from services.payments.accounts import StripeAccounts
from services.payments.checkout import CheckoutHandlers
from services.payments.handlers import PaymentHandlers
from services.payments.queue import ACK_WAIT_S, IN_FLIGHT, WORKERS, IntentQueue
from services.payments.stripe_api import PaymentMetrics
from services.payments.webhooks import WebhookHandlers


def build(settings: Settings) -> Service:
    service = Service("payments", settings)
    metrics = PaymentMetrics(service.registry)
    accounts = StripeAccounts(service, metrics)
    if accounts.installation.api is None:
        service.log.warning("no Stripe secret key (CARTWHEEL_STRIPE_SECRET_KEY): payment requests are refused, "
                            "except a tenant's with a key of its own")
    service.on_stop(accounts.close)
    intents = KeyedLocks()
    payments = PaymentHandlers(service, accounts, intents)
    webhooks = WebhookHandlers(service, accounts, intents, metrics)
    service.handle(subjects.PAYMENTS_INTENT_CREATE, CreateIntent)(payments.create_intent)
    service.handle(subjects.PAYMENTS_INTENT_CONFIRM, ConfirmIntent)(payments.confirm_intent)
    service.handle(subjects.PAYMENTS_INTENT_CANCEL, CancelIntent)(payments.cancel_intent)
    service.handle(subjects.PAYMENTS_REFUND, RefundPayment)(payments.refund_payment)
    service.handle(subjects.PAYMENTS_WEBHOOK, StripeWebhook)(webhooks.stripe_webhook)
    checkouts = CheckoutHandlers(payments)
    service.handle(subjects.PAYMENTS_CHECKOUT_CREATE, CreateCheckoutSession)(checkouts.create_checkout)
    service.handle(subjects.PAYMENTS_CHECKOUT_EXPIRE, ExpireCheckoutSession)(checkouts.expire_checkout)
    (durable, subject), = subjects.EVENT_CONSUMERS["payments"].items()
    queue = IntentQueue(payments)
    service.consume(subject, IntentRequested, durable, workers=WORKERS, in_flight=IN_FLIGHT,
                    ack_wait=ACK_WAIT_S)(queue.create_queued)
    return service
