"""Hosted checkout: the order's payment page at Stripe (a Checkout Session), opened and closed for the saga.

Stripe keeps a checkout page open 30 minutes at least, so a hosted checkout holds its stock at
least :data:`HOSTED_MIN_TTL_S`, and its page closes :data:`PAGE_CLOSES_BEFORE_S` before the
reservation ends: a payment made there always finds its stock still held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from cartwheel.contracts.base import Message
from cartwheel.contracts.orders import ORDER_ID
from cartwheel.contracts.payments import (
    CheckoutLine,
    CheckoutSessionView,
    CreateCheckoutSession,
    ExpireCheckoutSession,
)
from cartwheel.errors import DomainError, ServiceUnavailable
from services.orders import store
from services.orders.models import OrderRow

log = logging.getLogger("cartwheel.orders")

HOSTED_MIN_TTL_S = 32 * 60  # Stripe's least life of a checkout page (30 min), and the page's margin, and slack
HOSTED_MAX_TTL_S = 24 * 3600
PAGE_CLOSES_BEFORE_S = 60


def hosted_ttl(reservation_ttl_seconds: int) -> int:
    """The reservation of a hosted checkout: as long as Stripe keeps its page open, at least; 24 h at most (its
    page may stay open no longer)."""
    return min(max(reservation_ttl_seconds, HOSTED_MIN_TTL_S), HOSTED_MAX_TTL_S)


class CheckoutPages:
    def __init__(self, ask: Callable[[Message], Awaitable[Any]]) -> None:
        self._ask = ask

    async def open(self, placing: store.Placing, return_url: str | None) -> CheckoutSessionView:
        """The order's checkout page, closing before its reservation ends; the buyer comes back to ``return_url``."""
        if not return_url:
            raise DomainError("a hosted checkout needs the address the buyer comes back to", code="bad_request")
        assert placing.reserved_until is not None, "its lines are reserved first"
        back = return_url.replace(ORDER_ID, placing.order_id)
        lines = [CheckoutLine(name=line.name, quantity=line.quantity, unit_amount_cents=line.unit_price_cents)
                 for line in placing.lines]
        ask = CreateCheckoutSession(
            tenant=placing.tenant, order_id=placing.order_id, amount_cents=placing.total_cents,
            currency=placing.currency, lines=lines, email=placing.email,
            expires_at=placing.reserved_until - timedelta(seconds=PAGE_CLOSES_BEFORE_S),
            success_url=_with(back, "checkout=done"), cancel_url=_with(back, "checkout=cancelled"))
        return CheckoutSessionView.model_validate(await self._ask(ask))

    async def close(self, tenant: str, order_id: str, session_id: str) -> CheckoutSessionView | None:
        """Close an unpaid order's page: the page as it is then (``complete`` if it was paid meanwhile: its
        payment event settles the order); None if it could not be closed now (the sweeper tries again)."""
        try:
            return CheckoutSessionView.model_validate(await self._ask(
                ExpireCheckoutSession(tenant=tenant, order_id=order_id, checkout_session_id=session_id)))
        except (DomainError, ServiceUnavailable) as failure:
            log.warning("order %s: its checkout page could not be closed now (%s); trying again later", order_id,
                        failure)
            return None


def has_open_page(row: OrderRow) -> bool:
    return row.checkout_session_id is not None and row.payment_intent_id is None


def _with(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"
