"""The events a stock change causes, built purely: ids from the command, times from the lane."""

from __future__ import annotations

import uuid
from typing import Any

from cartwheel.contracts.inventory import (
    OutOfStock,
    ReservationExpired,
    StockChanged,
    StockCommitted,
    StockEvent,
    StockReleased,
    StockReserved,
)
from cartwheel.lanes.types import LaneCommand
from services.inventory.state import Reservation, Stock

_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "cartwheel:inventory:events")


def _fields(after: Stock, command: LaneCommand, name: str) -> dict[str, Any]:
    """What every inventory event carries; the id is the same each time this command is applied."""
    return {
        "id": str(uuid.uuid5(_IDS, f"{command.id}/{name}")),
        "occurred_at": command.issued_at,
        "tenant": after.tenant,
        "product_id": command.key,
        "on_hand": after.on_hand,
        "reserved": after.reserved,
        "available": after.available,
    }


def _of_reservation(reservation_id: str, held: Reservation) -> dict[str, Any]:
    return {"reservation_id": reservation_id, "order_id": held.order_id, "quantity": held.quantity}


def reserved(after: Stock, command: LaneCommand, reservation_id: str, held: Reservation) -> StockEvent:
    return StockReserved(
        **_fields(after, command, "reserved"), **_of_reservation(reservation_id, held), expires_at=held.expires_at
    )


def committed(after: Stock, command: LaneCommand, reservation_id: str, held: Reservation) -> StockEvent:
    return StockCommitted(**_fields(after, command, "committed"), **_of_reservation(reservation_id, held))


def released(after: Stock, command: LaneCommand, reservation_id: str, held: Reservation) -> StockEvent:
    return StockReleased(**_fields(after, command, "released"), **_of_reservation(reservation_id, held))


def expired(after: Stock, command: LaneCommand, reservation_id: str, held: Reservation) -> StockEvent:
    return ReservationExpired(**_fields(after, command, "expired"), **_of_reservation(reservation_id, held))


def stock_changed(after: Stock, command: LaneCommand, reason: str) -> StockEvent:
    return StockChanged(**_fields(after, command, "stock_changed"), reason=reason)


def sold_out(before: Stock, after: Stock, command: LaneCommand) -> list[StockEvent]:
    """``out_of_stock`` once, when the last available unit goes (not for every refused reserve)."""
    if before.available > 0 and after.available == 0:
        return [OutOfStock(**_fields(after, command, "out_of_stock"))]
    return []
