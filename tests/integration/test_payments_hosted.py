"""Hosted checkout through the payments service: the page at the embedded server, its webhooks, the order's events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import nats
import pytest
import requests

from cartwheel import subjects
from cartwheel.bus import request
from cartwheel.contracts.base import utcnow
from cartwheel.contracts.payments import CheckoutLine, CreateCheckoutSession, ExpireCheckoutSession
from tests.integration.test_payments import (
    TIMEOUT,
    Forwarder,
    create,
    forwarding,
    new_order,
    payment_events,
    payments,  # noqa: F401
)
from tests.stripe_fixtures import localstripe  # noqa: F401

CHECKOUT_EVENTS = ["checkout.session.completed", "checkout.session.expired", "payment_intent.succeeded"]


@pytest.fixture
def webhooks(client, localstripe) -> Iterator[Forwarder]:  # noqa: F811
    """The embedded server's webhooks (the page's and its intents') delivered to payments as the gateway does."""
    with forwarding(client, localstripe, CHECKOUT_EVENTS) as endpoint:
        yield endpoint


def page_for(order_id: str, minutes: int = 31) -> CreateCheckoutSession:
    return CreateCheckoutSession(
        order_id=order_id, amount_cents=2400, currency="EUR", email="ada@example.com",
        lines=[CheckoutLine(name="Mug", quantity=2, unit_amount_cents=1200)],
        expires_at=utcnow() + timedelta(minutes=minutes),
        success_url=f"http://shop.test/orders/{order_id}?checkout=done",
        cancel_url=f"http://shop.test/orders/{order_id}?checkout=cancelled")


def pay_on_page(url: str, number: str) -> requests.Response:
    return requests.post(url, data={"card_number": number, "expiry": "12/34", "cvc": "123"}, timeout=10,
                         allow_redirects=False)


def test_a_page_paid_after_a_decline_records_the_intent_stripe_made_and_announces_the_payment_once(
    payments, client, webhooks  # noqa: F811
) -> None:
    order_id = new_order()
    page = client.run(lambda nc: request(nc, page_for(order_id), TIMEOUT))
    assert page["status"] == "open" and page["payment_status"] == "unpaid" and page["url"]
    assert client.run(lambda nc: request(nc, page_for(order_id), TIMEOUT)) == page  # a retry: the same page

    assert pay_on_page(page["url"], "4000 0000 0000 0002").status_code == 402  # declined: the page stays open
    paid = pay_on_page(page["url"], "4242 4242 4242 4242")
    assert paid.status_code == 303 and paid.headers["Location"] == f"http://shop.test/orders/{order_id}?checkout=done"

    async def announced(nc: nats.NATS) -> list[tuple[str, dict[str, Any]]]:
        return await payment_events(nc, order_id, expect=1, quiet=1.5)

    (subject, event), = client.run(announced)  # once, whichever of the page's and the intent's webhooks came first
    assert subject == subjects.PAYMENTS_SUCCEEDED
    assert (event["amount_received_cents"], event["currency_received"]) == (2400, "EUR")
    intent = client.run(lambda nc: create(nc, order_id, amount_cents=2400))  # payments knows the page's intent now
    assert intent["payment_intent_id"] == event["payment_intent_id"] and intent["status"] == "succeeded"
    closed = client.run(lambda nc: request(nc, ExpireCheckoutSession(
        order_id=order_id, checkout_session_id=page["checkout_session_id"]), TIMEOUT))
    assert (closed["status"], closed["payment_status"], closed["url"]) == ("complete", "paid", None)


def test_a_page_closed_unpaid_is_announced_once_and_takes_no_payment_after(
    payments, client, webhooks  # noqa: F811
) -> None:
    order_id = new_order()
    page = client.run(lambda nc: request(nc, page_for(order_id), TIMEOUT))
    ask = ExpireCheckoutSession(order_id=order_id, checkout_session_id=page["checkout_session_id"])
    closed = client.run(lambda nc: request(nc, ask, TIMEOUT))
    assert (closed["status"], closed["url"]) == ("expired", None)
    assert client.run(lambda nc: request(nc, ask, TIMEOUT))["status"] == "expired"  # again: nothing more

    async def announced(nc: nats.NATS) -> list[tuple[str, dict[str, Any]]]:
        return await payment_events(nc, order_id, expect=1, quiet=1.5)

    (subject, event), = client.run(announced)  # ours and Stripe's webhook of it: one event
    assert subject == subjects.PAYMENTS_CHECKOUT_EXPIRED and event["checkout_session_id"] == page["checkout_session_id"]
    assert pay_on_page(page["url"], "4242 4242 4242 4242").status_code == 409
