"""Stock rules, free of I/O: what each command does to one product's stock.

Runs inside the product's lane, so commands of one product arrive one at a time, in order.
Pure: "now" is ``command.issued_at``, and event and alarm ids derive from the command, so
applying a command again (after a failed transaction) produces exactly the same outcome.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from cartwheel import subjects
from cartwheel.contracts.inventory import (
    MAX_ON_HAND,
    CommitReservation,
    InitStock,
    ReleaseReservation,
    ReservationEnded,
    ReservationHeld,
    ReserveStock,
    Restock,
    SetStock,
    StockCommand,
    StockEvent,
)
from cartwheel.errors import DomainError, Invalid
from cartwheel.lanes.types import ALARM, Alarm, LaneCommand, LaneSpec, Outcome
from services.inventory import events
from services.inventory.state import Reservation, Stock

_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "cartwheel:inventory")


def expiry_alarm_id(product_id: str, reservation_id: str) -> str:
    """Alarm ids are unique per lane, and one reservation id may hold stock of many products."""
    return str(uuid.uuid5(_IDS, f"expire/{product_id}/{reservation_id}"))


def reserve(stock: Stock, cmd: ReserveStock, command: LaneCommand) -> Outcome[Stock]:
    held = stock.reservations.get(cmd.reservation_id)
    if held is not None:  # a retry under a new command id: same answer, no second hold
        return Outcome(reply=_held(cmd.reservation_id, held, stock.available))
    if ended := stock.ended.get(cmd.reservation_id):
        raise DomainError(
            f"reservation {cmd.reservation_id} was already {ended.status}",
            code="reservation_closed",
            status=ended.status,
        )
    if cmd.quantity > stock.available:
        raise DomainError(
            f"only {stock.available} left",
            code="out_of_stock",
            product_id=command.key,
            available=stock.available,
            requested=cmd.quantity,
        )
    reservation = Reservation(
        order_id=cmd.order_id, quantity=cmd.quantity, expires_at=command.issued_at + timedelta(seconds=cmd.ttl_seconds)
    )
    after = stock.hold(cmd.reservation_id, reservation).model_copy(update={"tenant": cmd.tenant})
    alarm_id = expiry_alarm_id(command.key, cmd.reservation_id)
    alarm = Alarm(alarm_id, reservation.expires_at, {"reservation_id": cmd.reservation_id})
    return Outcome(
        reply=_held(cmd.reservation_id, reservation, after.available),
        state=after,
        events=[
            events.reserved(after, command, cmd.reservation_id, reservation),
            *events.sold_out(stock, after, command),
        ],
        alarms=[alarm],
    )


def commit(stock: Stock, cmd: CommitReservation, command: LaneCommand) -> Outcome[Stock]:
    held = stock.reservations.get(cmd.reservation_id)
    if held is None:
        ended = stock.ended.get(cmd.reservation_id)
        if ended and ended.status == "committed":
            return Outcome(reply=_ended(cmd.reservation_id, "committed", ended.quantity))
        status = ended.status if ended else "not_found"
        raise DomainError(
            f"reservation {cmd.reservation_id} is not held ({status}); its stock was not taken",
            code=f"reservation_{status}",
        )
    after = stock.end(cmd.reservation_id, "committed", on_hand_change=-held.quantity)
    return Outcome(
        reply=_ended(cmd.reservation_id, "committed", held.quantity),
        state=after,
        events=[events.committed(after, command, cmd.reservation_id, held)],
        cancel_alarms=[expiry_alarm_id(command.key, cmd.reservation_id)],
    )


def release(stock: Stock, cmd: ReleaseReservation, command: LaneCommand) -> Outcome[Stock]:
    held = stock.reservations.get(cmd.reservation_id)
    if held is None:
        ended = stock.ended.get(cmd.reservation_id)
        if ended and ended.status == "committed":
            raise DomainError(f"reservation {cmd.reservation_id} was committed", code="reservation_committed")
        if ended:
            return Outcome(reply=_ended(cmd.reservation_id, ended.status, ended.quantity))
        # Never seen: remember it as released, so a reserve that straggles in later holds nothing.
        return Outcome(reply=_ended(cmd.reservation_id, "released", 0), state=stock.end(cmd.reservation_id, "released"))
    after = stock.end(cmd.reservation_id, "released")
    return Outcome(
        reply=_ended(cmd.reservation_id, "released", held.quantity),
        state=after,
        events=[events.released(after, command, cmd.reservation_id, held)],
        cancel_alarms=[expiry_alarm_id(command.key, cmd.reservation_id)],
    )


def expire(stock: Stock, command: LaneCommand) -> Outcome[Stock]:
    """A reservation's alarm: release it if still held; a commit or release earlier in lane order wins."""
    reservation_id = str(command.body.get("body", {}).get("reservation_id", ""))
    held = stock.reservations.get(reservation_id)
    if held is None:
        return Outcome(reply={"status": "ignored", "reservation_id": reservation_id})
    after = stock.end(reservation_id, "expired")
    return Outcome(
        reply=_ended(reservation_id, "expired", held.quantity),
        state=after,
        events=[events.expired(after, command, reservation_id, held)],
    )


def restock(stock: Stock, cmd: Restock, command: LaneCommand) -> Outcome[Stock]:
    if stock.on_hand + cmd.quantity > MAX_ON_HAND:
        raise Invalid(
            f"stock on hand may not exceed {MAX_ON_HAND:,}",
            fields=[{"field": "quantity", "message": f"at most {MAX_ON_HAND - stock.on_hand} more fit"}],
        )
    after = stock.model_copy(update={"on_hand": stock.on_hand + cmd.quantity, "tenant": cmd.tenant})
    return _changed(after, command, "restocked", before=stock)


def set_stock(stock: Stock, cmd: SetStock, command: LaneCommand) -> Outcome[Stock]:
    if cmd.on_hand < stock.reserved:
        raise DomainError(
            f"{stock.reserved} units are reserved; on hand cannot go below that",
            code="below_reserved",
            reserved=stock.reserved,
            on_hand=stock.on_hand,
        )
    return _changed(stock.model_copy(update={"on_hand": cmd.on_hand, "tenant": cmd.tenant}), command, "set", stock)


def init(stock: Stock, cmd: InitStock, command: LaneCommand) -> Outcome[Stock]:
    """The catalog created the product: give it its row and initial stock, once."""
    if stock.initialized:
        return Outcome(reply=stock.level(command.key).model_dump())
    # Added, not set: an admin who restocked before this event arrived keeps that stock.
    on_hand = min(MAX_ON_HAND, stock.on_hand + (cmd.stock or 0))
    after = stock.model_copy(update={"on_hand": on_hand, "initialized": True, "tenant": cmd.tenant})
    return _changed(after, command, "created", stock)


COMMANDS: dict[str, tuple[type[StockCommand], Any]] = {
    ReserveStock.kind: (ReserveStock, reserve),
    CommitReservation.kind: (CommitReservation, commit),
    ReleaseReservation.kind: (ReleaseReservation, release),
    Restock.kind: (Restock, restock),
    SetStock.kind: (SetStock, set_stock),
    InitStock.kind: (InitStock, init),
}


def handle(stock: Stock, command: LaneCommand) -> Outcome[Stock]:
    """The inventory lane's handler: decode the command, apply its rule; a changed stock gets the next version."""
    if command.kind == ALARM:
        outcome = expire(stock, command)
    elif command.kind not in COMMANDS:
        raise Invalid(f"inventory has no command {command.kind!r}", fields=[{"field": "kind", "message": "unknown"}])
    else:
        model, rule = COMMANDS[command.kind]
        outcome = rule(stock, decode(model, command), command)
    if outcome.state is not None:
        version = stock.version + 1
        outcome.state = outcome.state.model_copy(update={"version": version})
        for event in outcome.events:
            if isinstance(event, StockEvent):
                event.version = version  # copies of the stock skip events older than what they hold
    return outcome


def decode(model: type[StockCommand], command: LaneCommand) -> Any:
    try:
        cmd = model.model_validate(command.body)
    except ValidationError as exc:
        raise Invalid("invalid inventory command", fields=_fields(exc)) from None
    if cmd.product_id != command.key:
        raise Invalid("product_id is not the lane key", fields=[{"field": "product_id", "message": "wrong product"}])
    return cmd


def _fields(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _changed(after: Stock, command: LaneCommand, reason: str, before: Stock) -> Outcome[Stock]:
    return Outcome(
        reply=after.level(command.key).model_dump(),
        state=after,
        events=[events.stock_changed(after, command, reason), *events.sold_out(before, after, command)],
    )


def _held(reservation_id: str, reservation: Reservation, available: int) -> dict[str, Any]:
    held = ReservationHeld(reservation_id=reservation_id, available=available, **reservation.model_dump())
    return held.model_dump(mode="json")


def _ended(reservation_id: str, status: str, quantity: int) -> dict[str, Any]:
    return ReservationEnded(status=status, reservation_id=reservation_id, quantity=quantity).model_dump(mode="json")  # type: ignore[arg-type]


def initial(product_id: str) -> Stock:
    return Stock()


LANE: LaneSpec[Stock] = LaneSpec(name=subjects.INVENTORY_LANE, state=Stock, initial=initial, handle=handle)
