"""One product's stock as its lane keeps it: what is on hand, what is held, and for whom."""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cartwheel.contracts.inventory import StockLevel

ENDED_KEPT = 256
"""Ended reservations remembered per product, newest last. Enough for a payment that lands late to
learn its reservation expired, and for a retried reserve not to hold twice; older ones read as unknown."""

EndedStatus = Literal["committed", "released", "expired"]


class Reservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    order_id: str
    quantity: int
    expires_at: datetime


class Ended(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: EndedStatus
    quantity: int


class Stock(BaseModel):
    """Invariant: ``0 <= reserved <= on_hand``, and ``reserved`` is the sum of the held reservations."""

    model_config = ConfigDict(frozen=True)

    on_hand: int = 0
    reserved: int = 0
    reservations: dict[str, Reservation] = Field(default_factory=dict)
    ended: dict[str, Ended] = Field(default_factory=dict)
    initialized: bool = False
    """Set once the catalog's product_created arrived, so its initial stock is added only once."""
    tenant: str = "default"
    version: int = 0
    """One more with every change (set by the lane): copies of the stock elsewhere keep the highest."""

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def level(self, product_id: str) -> StockLevel:
        return StockLevel(product_id=product_id, on_hand=self.on_hand, reserved=self.reserved, available=self.available)

    def hold(self, reservation_id: str, reservation: Reservation) -> Stock:
        return self.model_copy(
            update={
                "reserved": self.reserved + reservation.quantity,
                "reservations": {**self.reservations, reservation_id: reservation},
            }
        )

    def end(self, reservation_id: str, status: EndedStatus, *, on_hand_change: int = 0) -> Stock:
        """The reservation stops holding stock (committed, released or expired) and is remembered as ended."""
        held = self.reservations.get(reservation_id)
        quantity = held.quantity if held else 0
        return self.model_copy(
            update={
                "on_hand": self.on_hand + on_hand_change,
                "reserved": self.reserved - quantity,
                "reservations": {k: v for k, v in self.reservations.items() if k != reservation_id},
                "ended": _remember(self.ended, reservation_id, Ended(status=status, quantity=quantity)),
            }
        )


class Counts(BaseModel):
    """Just the numbers of a stored :class:`Stock`: queries read this, skipping the reservations."""

    on_hand: int = 0
    reserved: int = 0
    version: int = 0

    def level(self, product_id: str) -> StockLevel:
        return StockLevel(
            product_id=product_id, on_hand=self.on_hand, reserved=self.reserved, available=self.on_hand - self.reserved
        )


def _remember(ended: dict[str, Ended], reservation_id: str, outcome: Ended) -> dict[str, Ended]:
    kept = {k: v for k, v in ended.items() if k != reservation_id}
    kept[reservation_id] = outcome
    return dict(islice(kept.items(), max(0, len(kept) - ENDED_KEPT), None))
