"""Cart rules, free of I/O: what each command does to one cart, applied in its lane's order.

Pure: "now" is the command's ``issued_at`` and event ids derive from the command id, so a
replayed command produces exactly the same outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from cartwheel.contracts.cart import (
    CART_LANE,
    MAX_LINE_QUANTITY,
    MAX_LINES,
    AbsorbCart,
    AddItem,
    CartAbandoned,
    CartCheckedOut,
    CartCommand,
    CartUpdated,
    CheckOut,
    ClearCart,
    MergeAway,
    RemoveItem,
    SetQuantity,
)
from cartwheel.errors import DomainError, Invalid, NotFound
from cartwheel.lanes.types import ALARM, Alarm, LaneCommand, LaneSpec, Outcome
from services.cart import merging
from services.cart.state import (
    CartState,
    CartTimers,
    Line,
    abandon_alarm,
    changed,
    check_available,
    check_open,
    event_id,
    forget_alarm,
    view,
)

__all__ = ["CartState", "CartTimers", "abandon_alarm", "forget_alarm", "make_spec", "view"]


def add_item(state: CartState, cmd: AddItem, now: datetime) -> CartState:
    check_open(state)
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
    check_available(product.product_id, quantity, cmd.available)
    # The existing line keeps the price it was added at; a new line snapshots it now.
    line = Line(product=current.product if current else product, quantity=quantity)
    owned = state.model_copy(update={"email": cmd.email}) if cmd.email else state
    return changed(owned, {**state.lines, product.product_id: line}, now)


def set_quantity(state: CartState, cmd: SetQuantity, now: datetime) -> CartState:
    check_open(state)
    current = state.lines.get(cmd.product_id)
    if current is None:
        raise NotFound("that product is not in the cart", product_id=cmd.product_id)
    if cmd.quantity == 0:
        return _without(state, cmd.product_id, now)
    if cmd.quantity > current.quantity:
        check_available(cmd.product_id, cmd.quantity, cmd.available)
    return changed(state, {**state.lines, cmd.product_id: current.model_copy(update={"quantity": cmd.quantity})}, now)


def remove_item(state: CartState, cmd: RemoveItem, now: datetime) -> CartState:
    check_open(state)
    if cmd.product_id not in state.lines:
        raise NotFound("that product is not in the cart", product_id=cmd.product_id)
    return _without(state, cmd.product_id, now)


def clear(state: CartState, cmd: ClearCart, now: datetime) -> CartState:
    check_open(state)
    return changed(state, {}, now)


def _without(state: CartState, product_id: str, now: datetime) -> CartState:
    return changed(state, {k: v for k, v in state.lines.items() if k != product_id}, now)


RULES: dict[str, tuple[type[CartCommand], Any]] = {
    AddItem.kind: (AddItem, add_item),
    SetQuantity.kind: (SetQuantity, set_quantity),
    RemoveItem.kind: (RemoveItem, remove_item),
    ClearCart.kind: (ClearCart, clear),
}


def check_out(state: CartState, cmd: CheckOut, command: LaneCommand, timers: CartTimers) -> Outcome[CartState]:
    """The order placed from this cart was paid: the cart closes; the shopper's next add starts a new one."""
    if state.status not in ("active", "abandoned") or (not state.lines and not state.version):
        return Outcome(reply=view(command.key, state).model_dump(mode="json"))  # closed already, or never existed
    now = command.issued_at
    after = state.model_copy(update={"status": "checked_out", "updated_at": now, "version": state.version + 1})
    cart = view(command.key, after)
    forget = [] if state.email else [Alarm(id=forget_alarm(command.key), at=now + timers.forget_anonymous_after)]
    return Outcome(
        reply=cart.model_dump(mode="json"),
        state=after,
        events=[
            CartUpdated(id=event_id(command.id, "updated"), occurred_at=now, cart=cart),
            CartCheckedOut(
                id=event_id(command.id, "checked_out"), occurred_at=now, cart=cart, order_id=cmd.order_id,
                email=state.email,
            ),
        ],
        alarms=forget,
        cancel_alarms=[abandon_alarm(command.key)],
    )


OUTCOME_RULES: dict[str, tuple[type[CartCommand], Any]] = {
    MergeAway.kind: (MergeAway, merging.merge_away),
    AbsorbCart.kind: (AbsorbCart, merging.absorb),
    CheckOut.kind: (CheckOut, check_out),
}
"""Rules that make their own outcome (events and alarms of their own)."""


def make_spec(timers: CartTimers | None = None, tenant: str = "default") -> LaneSpec[CartState]:
    """The cart lane; its events carry ``tenant``, the shop this cart service serves."""
    timers = timers or CartTimers()

    def handle(state: CartState, command: LaneCommand) -> Outcome[CartState]:
        outcome = apply(state, command)
        outcome.events = [event.model_copy(update={"tenant": tenant}) for event in outcome.events]
        return outcome

    def apply(state: CartState, command: LaneCommand) -> Outcome[CartState]:
        now = command.issued_at
        if command.kind == ALARM:
            return _on_alarm(state, command, timers)
        if command.kind in OUTCOME_RULES:
            model, own_rule = OUTCOME_RULES[command.kind]
            return own_rule(state, _parse(model, command), command, timers)  # type: ignore[no-any-return]
        if command.kind not in RULES:
            raise Invalid(f"the cart has no command {command.kind!r}")
        model, rule = RULES[command.kind]
        after = rule(state, _parse(model, command), now)
        cart = view(command.key, after)
        return Outcome(
            reply=cart.model_dump(mode="json"),
            state=after,
            events=[CartUpdated(id=event_id(command.id, "updated"), occurred_at=now, cart=cart)],
            alarms=[Alarm(id=abandon_alarm(command.key), at=now + timers.abandon_after)],
            cancel_alarms=[forget_alarm(command.key)],
        )

    return LaneSpec(name=CART_LANE, state=CartState, initial=lambda key: CartState(), handle=handle)


def _parse(model: type[CartCommand], command: LaneCommand) -> Any:
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
    return cmd


def _on_alarm(state: CartState, command: LaneCommand, timers: CartTimers) -> Outcome[CartState]:
    now, cart_id = command.issued_at, command.key
    alarm = command.body.get("alarm_id")
    # An anonymous cart left alone is forgotten a while after it was last touched; a user's cart is kept.
    forget = [] if state.email else [Alarm(id=forget_alarm(cart_id), at=now + timers.forget_anonymous_after)]
    if alarm == abandon_alarm(cart_id) and state.status == "active" and state.lines:
        after = state.model_copy(update={"status": "abandoned", "version": state.version + 1})
        return Outcome(
            reply={},
            state=after,
            alarms=forget,
            events=[
                CartAbandoned(
                    id=event_id(command.id, "abandoned"), occurred_at=now, cart=view(cart_id, after), email=state.email
                )
            ],
        )
    if alarm == abandon_alarm(cart_id):  # nothing in it to abandon
        return Outcome(reply={}, alarms=forget)
    if alarm == forget_alarm(cart_id) and not state.email:
        gone = view(cart_id, CartState(status="expired", updated_at=now, version=state.version + 1))
        return Outcome(
            reply={},
            delete=True,
            events=[CartUpdated(id=event_id(command.id, "expired"), occurred_at=now, cart=gone)],
        )
    return Outcome(reply={})
