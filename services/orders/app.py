"""Wires the orders service: the checkout saga, order queries, and the payment events that move orders."""

from __future__ import annotations

from cartwheel import subjects
from cartwheel.contracts.orders import CancelOrder, Checkout, GetOrder, ListOrders, PayOrder
from cartwheel.contracts.payments import (
    CheckoutExpired,
    PaymentCanceled,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentEvent,
    PaymentFailed,
    PaymentIntentCreated,
    PaymentNotStarted,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentRequiresAction,
    PaymentSucceeded,
)
from cartwheel.service import Service
from cartwheel.settings import Settings
from services.orders.counts import OrderCounts
from services.orders.saga import Saga

PAYMENT_EVENTS: dict[str, type[PaymentEvent | PaymentNotStarted | CheckoutExpired]] = {
    kind.subject: kind
    for kind in (PaymentSucceeded, PaymentFailed, PaymentCanceled, PaymentRefunded, PaymentRequiresAction,
                 PaymentDisputed, PaymentDisputeClosed, PaymentRefundFailed, PaymentIntentCreated, PaymentNotStarted,
                 CheckoutExpired)
}


def build(settings: Settings) -> Service:
    service = Service("orders", settings)
    saga = Saga(service)
    OrderCounts(service)
    service.on_start(saga.start)
    service.on_stop(saga.stop)
    service.handle(subjects.ORDERS_CHECKOUT, Checkout)(saga.checkout)
    service.handle(subjects.ORDERS_GET, GetOrder)(saga.get)
    service.handle(subjects.ORDERS_LIST, ListOrders)(saga.list)
    service.handle(subjects.ORDERS_CANCEL, CancelOrder)(saga.cancel)
    service.handle(subjects.ORDERS_PAY, PayOrder)(saga.pay)
    for subject, model in PAYMENT_EVENTS.items():
        durable = "orders_" + subject.rsplit(".", 1)[1]
        service.consume(subject, model, durable=durable)(saga.on_payment_event)
    return service
