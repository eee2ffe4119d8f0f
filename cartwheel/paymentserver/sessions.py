"""Checkout Sessions as the stand-in keeps them, and as Stripe shows them (pure).

A session is ``open`` until it is paid on the hosted page (``complete``) or runs out, by itself at
``expires_at`` or when asked (``expired``). Its PaymentIntent is made at the first attempt to pay.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["open", "complete", "expired"]
ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(length))


@dataclass
class Line:
    name: str
    unit_amount: int  # in Stripe's units of the session's currency
    quantity: int
    id: str = field(default_factory=lambda: new_id("li_"))
    price: str = field(default_factory=lambda: new_id("price_"))
    product: str = field(default_factory=lambda: new_id("prod_"))

    @property
    def amount(self) -> int:
        return self.unit_amount * self.quantity


@dataclass
class CheckoutSession:
    id: str
    created: int
    expires_at: int
    currency: str
    lines: list[Line]
    success_url: str
    cancel_url: str
    page_url: str  # the hosted page, on the address the session was created through
    client_reference_id: str | None = None
    customer_email: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    intent_metadata: dict[str, str] = field(default_factory=dict)  # payment_intent_data[metadata]
    receipt_email: str | None = None  # payment_intent_data[receipt_email]
    status: Status = "open"
    payment_intent: str | None = None
    request_digest: str = ""  # of the creating request's parameters, for its Idempotency-Key

    @property
    def amount_total(self) -> int:
        return sum(line.amount for line in self.lines)

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def due(self, now: float) -> bool:
        return self.is_open and now >= self.expires_at

    @classmethod
    def from_dict(cls, kept: dict[str, Any]) -> CheckoutSession:
        return cls(**{**kept, "lines": [Line(**line) for line in kept["lines"]]})


def present_session(session: CheckoutSession, *, with_lines: bool = False) -> dict[str, Any]:
    """The session as Stripe answers it (``line_items`` only when expanded, as at Stripe)."""
    paid = session.status == "complete"
    shown: dict[str, Any] = {
        "id": session.id, "object": "checkout.session", "mode": "payment", "livemode": False,
        "created": session.created, "expires_at": session.expires_at, "status": session.status,
        "payment_status": "paid" if paid else "unpaid", "url": session.page_url if session.is_open else None,
        "amount_subtotal": session.amount_total, "amount_total": session.amount_total, "currency": session.currency,
        "client_reference_id": session.client_reference_id, "customer_email": session.customer_email,
        "customer": None, "customer_details": {"email": session.customer_email} if paid else None,
        "metadata": dict(session.metadata), "payment_intent": session.payment_intent,
        "payment_method_types": ["card"], "success_url": session.success_url, "cancel_url": session.cancel_url,
    }
    if with_lines:
        shown["line_items"] = present_lines(session)
    return shown


def present_line(line: Line, currency: str) -> dict[str, Any]:
    price = {"id": line.price, "object": "price", "active": False, "currency": currency, "livemode": False,
             "product": line.product, "type": "one_time", "unit_amount": line.unit_amount}
    return {"id": line.id, "object": "item", "amount_discount": 0, "amount_subtotal": line.amount,
            "amount_tax": 0, "amount_total": line.amount, "currency": currency, "description": line.name,
            "price": price, "quantity": line.quantity}


def present_lines(session: CheckoutSession, limit: int = 10, starting_after: str | None = None) -> dict[str, Any]:
    """``GET /v1/checkout/sessions/{id}/line_items``: a Stripe list, ``limit`` at a time."""
    ids = [line.id for line in session.lines]
    start = ids.index(starting_after) + 1 if starting_after in ids else 0
    page = session.lines[start:start + limit]
    return {"object": "list", "data": [present_line(line, session.currency) for line in page],
            "has_more": start + limit < len(ids), "url": f"/v1/checkout/sessions/{session.id}/line_items"}
