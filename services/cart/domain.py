"""Cart rules, free of I/O: what each command does to one cart, applied in its lane's order.

Pure: "now" is the command's ``issued_at`` and event ids derive from the command id, so a
replayed command produces exactly the same outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cartwheel.contracts.cart import (
    MAX_LINE_QUANTITY,
    MAX_LINES,
    AddItem,
    CartAbandoned,
    CartCommand,
    CartLine,
    CartStatus,
    CartUpdated,
    CartView,
    ClearCart,
    ProductSnapshot,
    RemoveItem,
    SetQuantity,
)
from cartwheel.errors import DomainError, Invalid, NotFound
from cartwheel.lanes.types import ALARM, Alarm, LaneCommand, LaneSpec, Outcome

_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "cartwheel:cart")


@dataclass(frozen=True)
class CartTimers:
    abandon_after: timedelta = timedelta(minutes=30)
    forget_anonymous_after: timedelta = timedelta(days=30)


class Line(BaseModel):
    model_config = ConfigDict(frozen=True)

    product: ProductSnapshot
    quantity: int


class CartState(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: CartStatus = "active"
    lines: dict[str, Line] = Field(default_factory=dict)
    email: str | None = None
    updated_at: datetime | None = None

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
    )


def _open(state: CartState) -> None:
    if state.status in ("merged", "checked_out"):
        raise DomainError(
            f"this cart was {state.status.replace('_', ' ')}; start a new one", code="cart_closed", status=state.status
        )


def _check_available(product_id: str, quantity: int, available: int | None) -> None:
    if available is not None and quantity > available:
        raise DomainError(
            f"only {available} available",
            code="out_of_stock",
            product_id=product_id,
            available=available,
            requested=quantity,
        )


def add_item(state: CartState, cmd: AddItem, now: datetime) -> CartState:
    _open(state)
    product = cmd.product
    if not product.active:
        raise NotFound("this product is not for sale", product_id=product.product_id)
    if state.currency and product.currency != state.currency:
        raise DomainError(
            f"this cart is in {state.currency}; {product.sku} is priced in {product.currency}",
            code="currency_mismatch",
            cart_currency=state.currency,
            currency=product.currency,
        )
    current = state.lines.get(product.product_id)
    if current is None and len(state.lines) >= MAX_LINES:
        raise Invalid(
            f"a cart holds at most {MAX_LINES} different products",
            fields=[{"field": "product_id", "message": "too many lines"}],
        )
    quantity = cmd.quantity + (current.quantity if current else 0)
    if quantity > MAX_LINE_QUANTITY:
        raise Invalid(
            f"at most {MAX_LINE_QUANTITY} of one product",
            fields=[{"field": "quantity", "message": f"line would hold {quantity}"}],
        )
    _check_available(product.product_id, quantity, cmd.available)
    # The existing line keeps the price it was added at; a new line snapshots it now.
    line = Line(product=current.product if current else product, quantity=quantity)
    return _changed(state, {**state.lines, product.product_id: line}, now)


def set_quantity(state: CartState, cmd: SetQuantity, now: datetime) -> CartState:
    _open(state)
    current = state.lines.get(cmd.product_id)
    if current is None:
        raise NotFound("that product is not in the cart", product_id=cmd.product_id)
    if cmd.quantity == 0:
        return _without(state, cmd.product_id, now)
    if cmd.quantity > current.quantity:
        _check_available(cmd.product_id, cmd.quantity, cmd.available)
    return _changed(state, {**state.lines, cmd.product_id: current.model_copy(update={"quantity": cmd.quantity})}, now)


def remove_item(state: CartState, cmd: RemoveItem, now: datetime) -> CartState:
    _open(state)
    if cmd.product_id not in state.lines:
        raise NotFound("that product is not in the cart", product_id=cmd.product_id)
    return _without(state, cmd.product_id, now)


def clear(state: CartState, cmd: ClearCart, now: datetime) -> CartState:
    _open(state)
    return _changed(state, {}, now)


def _without(state: CartState, product_id: str, now: datetime) -> CartState:
    return _changed(state, {k: v for k, v in state.lines.items() if k != product_id}, now)


def _changed(state: CartState, lines: dict[str, Line], now: datetime) -> CartState:
    """Any edit makes an abandoned cart active again."""
    return state.model_copy(update={"lines": lines, "status": "active", "updated_at": now})


RULES: dict[str, tuple[type[CartCommand], Any]] = {
    AddItem.kind: (AddItem, add_item),
    SetQuantity.kind: (SetQuantity, set_quantity),
    RemoveItem.kind: (RemoveItem, remove_item),
    ClearCart.kind: (ClearCart, clear),
}


def abandon_alarm(cart_id: str) -> str:
    return f"abandon-{cart_id}"


def forget_alarm(cart_id: str) -> str:
    return f"forget-{cart_id}"


def make_spec(timers: CartTimers = CartTimers()) -> LaneSpec[CartState]:
    def handle(state: CartState, command: LaneCommand) -> Outcome[CartState]:
        now = command.issued_at
        if command.kind == ALARM:
            return _on_alarm(state, command, timers)
        if command.kind not in RULES:
            raise Invalid(f"the cart has no command {command.kind!r}")
        model, rule = RULES[command.kind]
        try:
            cmd = model.model_validate(command.body)
        except ValidationError as exc:
            raise Invalid(
                "invalid cart command",
                fields=[
                    {"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors(include_url=False)
                ],
            ) from None
        if cmd.cart_id != command.key:
            raise Invalid("cart_id is not the lane key")
        after = rule(state, cmd, now)
        cart = view(command.key, after)
        return Outcome(
            reply=cart.model_dump(mode="json"),
            state=after,
            events=[CartUpdated(id=_event_id(command.id, "updated"), occurred_at=now, cart=cart)],
            alarms=[Alarm(id=abandon_alarm(command.key), at=now + timers.abandon_after)],
            cancel_alarms=[forget_alarm(command.key)],
        )

    return LaneSpec(name="cart", state=CartState, initial=lambda key: CartState(), handle=handle)


def _on_alarm(state: CartState, command: LaneCommand, timers: CartTimers) -> Outcome[CartState]:
    now, cart_id = command.issued_at, command.key
    alarm = command.body.get("alarm_id")
    if alarm == abandon_alarm(cart_id) and state.status == "active" and state.lines:
        after = state.model_copy(update={"status": "abandoned"})
        forget = [] if state.email else [Alarm(id=forget_alarm(cart_id), at=now + timers.forget_anonymous_after)]
        return Outcome(
            reply={},
            state=after,
            alarms=forget,
            events=[
                CartAbandoned(
                    id=_event_id(command.id, "abandoned"), occurred_at=now, cart=view(cart_id, after), email=state.email
                )
            ],
        )
    if alarm == forget_alarm(cart_id) and state.status == "abandoned" and not state.email:
        after = CartState(status="expired", updated_at=now)
        return Outcome(
            reply={},
            state=after,
            events=[CartUpdated(id=_event_id(command.id, "expired"), occurred_at=now, cart=view(cart_id, after))],
        )
    return Outcome(reply={})


def _event_id(command_id: str, what: str) -> str:
    return str(uuid.uuid5(_IDS, f"{what}/{command_id}"))
