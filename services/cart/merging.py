"""Login merges the anonymous cart into the user's, as two lane commands, one per cart.

``merge_away`` closes the anonymous cart and hands its lines over; ``absorb`` adds them to the
user's cart: quantities add, the user's existing snapshot price wins, and each line is capped
by what is available now. Whatever did not move in full is listed, so the shopper can be told.
"""

from __future__ import annotations

from typing import Any

from cartwheel.contracts.cart import (
    MAX_LINE_QUANTITY,
    MAX_LINES,
    AbsorbCart,
    CartMerged,
    CartUpdated,
    MergeAdjustment,
    MergeAway,
    MergedLine,
)
from cartwheel.errors import DomainError
from cartwheel.lanes.types import Alarm, LaneCommand, Outcome
from services.cart.state import (
    CartState,
    CartTimers,
    Line,
    abandon_alarm,
    changed,
    check_open,
    event_id,
    forget_alarm,
    view,
)


def merge_away(state: CartState, cmd: MergeAway, command: LaneCommand, timers: CartTimers) -> Outcome[CartState]:
    if state.status == "merged" and state.merged_into == cmd.into:
        return Outcome(reply={"lines": []})  # moved already: a retry whose record was pruned
    if state.status == "merged":
        raise DomainError("this cart was merged into another", code="cart_closed", status=state.status)
    check_open(state)
    now = command.issued_at
    update = {"status": "merged", "merged_into": cmd.into, "updated_at": now, "version": state.version + 1}
    after = state.model_copy(update=update)
    lines = [MergedLine(product=line.product, quantity=line.quantity) for line in state.lines.values()]
    forget = [] if state.email else [Alarm(id=forget_alarm(command.key), at=now + timers.forget_anonymous_after)]
    return Outcome(
        reply={"lines": [line.model_dump(mode="json") for line in lines]},
        state=after,
        events=[CartUpdated(id=event_id(command.id, "updated"), occurred_at=now, cart=view(command.key, after))],
        alarms=forget,
        cancel_alarms=[abandon_alarm(command.key)],
    )


def absorb(state: CartState, cmd: AbsorbCart, command: LaneCommand, timers: CartTimers) -> Outcome[CartState]:
    check_open(state)
    now = command.issued_at
    lines, adjustments = _merged_lines(state, cmd)
    after = changed(state.model_copy(update={"email": cmd.email or state.email}), lines, now)
    cart = view(command.key, after)
    return Outcome(
        reply={"cart": cart.model_dump(mode="json"), "adjustments": [a.model_dump(mode="json") for a in adjustments]},
        state=after,
        events=[
            CartUpdated(id=event_id(command.id, "updated"), occurred_at=now, cart=cart),
            CartMerged(
                id=event_id(command.id, "merged"),
                occurred_at=now,
                source_cart_id=cmd.source_cart_id,
                cart=cart,
                email=after.email,
                adjustments=adjustments,
            ),
        ],
        alarms=[Alarm(id=abandon_alarm(command.key), at=now + timers.abandon_after)],
        cancel_alarms=[forget_alarm(command.key)],
    )


def _merged_lines(state: CartState, cmd: AbsorbCart) -> tuple[dict[str, Line], list[MergeAdjustment]]:
    lines = dict(state.lines)
    currency = state.currency
    adjustments: list[MergeAdjustment] = []
    for incoming in cmd.lines:
        product = incoming.product
        current = lines.get(product.product_id)
        have = current.quantity if current else 0
        wanted = have + incoming.quantity
        if not cmd.for_sale.get(product.product_id, False):
            adjustments.append(_adjustment(incoming, wanted, have, "not_for_sale"))
        elif current is None and currency is not None and product.currency != currency:
            adjustments.append(_adjustment(incoming, wanted, 0, "currency_mismatch"))
        elif current is None and len(lines) >= MAX_LINES:
            adjustments.append(_adjustment(incoming, wanted, 0, "line_limit"))
        else:
            quantity, reason, available = _capped(wanted, have, cmd.available.get(product.product_id))
            if quantity < wanted:
                adjustments.append(_adjustment(incoming, wanted, quantity, reason, available))
            if quantity > 0:  # the user's line keeps its price; a new line brings the anonymous snapshot
                lines[product.product_id] = Line(product=current.product if current else product, quantity=quantity)
                currency = currency or product.currency
    return lines, adjustments


def _adjustment(
    incoming: MergedLine, wanted: int, quantity: int, reason: Any, available: int | None = None
) -> MergeAdjustment:
    product = incoming.product
    return MergeAdjustment(
        product_id=product.product_id,
        sku=product.sku,
        name=product.name,
        requested=wanted,
        quantity=quantity,
        reason=reason,
        available=available,
    )


def _capped(wanted: int, have: int, available: int | None) -> tuple[int, str, int | None]:
    """How many the merged line may hold: what is available, but never less than the user already had."""
    if available is not None and max(available, have) < min(wanted, MAX_LINE_QUANTITY):
        return max(available, have), "out_of_stock", available
    return min(wanted, MAX_LINE_QUANTITY), "quantity_limit", available


