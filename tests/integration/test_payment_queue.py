"""Intents beyond Stripe's rate limit are queued durably and announced, never refused (real NATS, SQL, localstripe)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import nats

from cartwheel import subjects
from cartwheel.bus import request
from cartwheel.contracts.base import utcnow
from cartwheel.contracts.payments import CreateIntent
from tests.integration.test_payments import API_KEY, SECRET, TIMEOUT, create, new_order, payment_events
from tests.stripe_fixtures import localstripe  # noqa: F401

RATE = 4.0  # calls a second: a burst of 12 outruns it


def test_intents_beyond_the_rate_are_queued_then_created_and_announced_once_each(
    database_url: str, localstripe: str, start_service, client  # noqa: F811
) -> None:
    start_service("payments", payments_database_url=database_url, stripe_secret_key=API_KEY,
                  stripe_api_base=localstripe, stripe_webhook_secret=SECRET, stripe_requests_per_second=RATE,
                  stripe_checkout_wait_seconds=0.05)
    orders = [new_order() for _ in range(12)]

    async def burst(nc: nats.NATS) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(create(nc, order_id) for order_id in orders)))

    answers = client.run(burst)
    queued = [order_id for order_id, answer in zip(orders, answers, strict=True) if answer.get("queued")]
    made = {order_id: answer["payment_intent_id"] for order_id, answer in zip(orders, answers, strict=True)
            if not answer.get("queued")}
    assert queued and made, answers  # the first few in their turn, the rest queued
    assert all(answer == {"queued": True, "order_id": order_id}
               for order_id, answer in zip(orders, answers, strict=True) if order_id in queued)

    async def announced(nc: nats.NATS) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        return {order_id: await payment_events(nc, order_id, expect=2, quiet=0.3) for order_id in queued}

    events = client.run(announced)
    for order_id in queued:
        (asked, _), (subject, event) = events[order_id]  # queued, then created once, with what the browser needs
        assert (asked, subject) == (subjects.PAYMENTS_INTENT_REQUESTED, subjects.PAYMENTS_INTENT_CREATED)
        assert event["payment_intent_id"].startswith("pi_") and event["client_secret"].startswith(event[
            "payment_intent_id"]) and event["status"] == "requires_payment_method"
        made[order_id] = event["payment_intent_id"]

    again = client.run(burst)  # a retry gets the order's intent, queued or not
    assert {order_id: answer["payment_intent_id"] for order_id, answer in zip(orders, again, strict=True)} == made
    assert len(set(made.values())) == len(orders)  # one intent per order, whichever way it was made


def test_a_queued_intent_whose_order_can_no_longer_be_paid_is_not_created(
    database_url: str, localstripe: str, start_service, client  # noqa: F811
) -> None:
    start_service("payments", payments_database_url=database_url, stripe_secret_key=API_KEY,
                  stripe_api_base=localstripe, stripe_webhook_secret=SECRET, stripe_requests_per_second=0.5,
                  stripe_checkout_wait_seconds=0.0)
    first, late = new_order(), new_order()

    async def both(nc: nats.NATS) -> list[dict[str, Any]]:
        await create(nc, first)  # the only turn for the next two seconds
        ask = CreateIntent(order_id=late, amount_cents=1234, currency="EUR", not_after=utcnow() + timedelta(seconds=1))
        return [await request(nc, ask, TIMEOUT)]

    (answer,) = client.run(both)
    assert answer == {"queued": True, "order_id": late}

    async def announced(nc: nats.NATS) -> list[tuple[str, dict[str, Any]]]:
        return await payment_events(nc, late, expect=2, quiet=0.5)

    (_, _), (subject, event) = client.run(announced)
    assert subject == subjects.PAYMENTS_NOT_STARTED and "reservation ended" in event["reason"]
