"""A cart's state and how shoppers see it; the checks every rule shares. Pure: no I/O, no clock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from cartwheel.contracts.cart import CartLine, CartStatus, CartView, ProductSnapshot
from cartwheel.errors import DomainError

_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "cartwheel:cart")


@dataclass(frozen=True)
class CartTimers:
    abandon_after: timedelta = timedelta(minutes=30)
    forget_anonymous_after: timedelta = timedelta(days=30)


def abandon_alarm(cart_id: str) -> str:
    return f"abandon-{cart_id}"


def forget_alarm(cart_id: str) -> str:
    return f"forget-{cart_id}"


def event_id(command_id: str, what: str) -> str:
    """Derived from the command, so a replayed command emits the same event ids."""
    return str(uuid.uuid5(_IDS, f"{what}/{command_id}"))


class Line(BaseModel):
    model_config = ConfigDict(frozen=True)

    product: ProductSnapshot
    quantity: int


class CartState(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: CartStatus = "active"
    lines: dict[str, Line] = Field(default_factory=dict)
    email: str | None = None
    """The signed-in owner's: their cart is never forgotten, and abandonment mails can reach them."""
    merged_into: str | None = None
    updated_at: datetime | None = None
    version: int = 0
    """One more with every change: orders copies of the cart (SSE) where clocks of different servers would not."""

    @property
    def currency(self) -> str | None:
        return next(iter(self.lines.values())).product.currency if self.lines else None


def view(cart_id: str, state: CartState) -> CartView:
    items = [
        CartLine(
            product_id=pid,
            sku=line.product.sku,
            name=line.product.name,
            quantity=line.quantity,
            unit_price_cents=line.product.unit_price_cents,
            line_total_cents=line.product.unit_price_cents * line.quantity,
        )
        for pid, line in state.lines.items()
    ]
    return CartView(
        id=cart_id,
        items=items,
        item_count=sum(i.quantity for i in items),
        total_cents=sum(i.line_total_cents for i in items),
        currency=state.currency,
        status=state.status,
        updated_at=state.updated_at,
        version=state.version,
    )


def check_open(state: CartState) -> None:
    if state.status in ("merged", "checked_out"):
        raise DomainError(
            f"this cart was {state.status.replace('_', ' ')}; start a new one", code="cart_closed", status=state.status
        )


def check_available(product_id: str, quantity: int, available: int | None) -> None:
    if available is not None and quantity > available:
        raise DomainError(
            f"only {available} available",
            code="out_of_stock",
            product_id=product_id,
            available=available,
            requested=quantity,
        )


def changed(state: CartState, lines: dict[str, Line], now: datetime) -> CartState:
    """Any edit makes an abandoned cart active again."""
    update = {"lines": lines, "status": "active", "updated_at": now, "version": state.version + 1}
    return state.model_copy(update=update)
