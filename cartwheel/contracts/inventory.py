"""Messages owned by the inventory service.

Three kinds:

- queries and admin commands over core request/reply (``subject``): :class:`GetStock`,
  :class:`GetStocks`, :class:`Restock`, :class:`SetStock`;
- lane commands (``kind``), sent with ``LaneClient(nc, INVENTORY_LANE).call(cmd.product_id, cmd.kind,
  cmd.model_dump(mode="json"), command_id=cmd.id)``: :class:`ReserveStock`, :class:`CommitReservation`,
  :class:`ReleaseReservation`, and :class:`Restock`, :class:`SetStock`, :class:`InitStock`; reusing
  ``cmd.id`` as the command id makes a retry of the same message safe;
- events on the EVENTS stream (``subject``), each with the product's levels after the change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from cartwheel import subjects
from cartwheel.contracts.base import Message

MAX_QUANTITY = 10_000
MAX_ON_HAND = 10_000_000
MAX_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_TTL_SECONDS = 15 * 60
MAX_STOCKS_PER_QUERY = 500

# One NATS subject token (the lane key): no dots, spaces or wildcards.
ProductId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ReservationId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]
OrderId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY, description=f"Units, 1 to {MAX_QUANTITY:,}.")]
OnHand = Annotated[StrictInt, Field(ge=0, le=MAX_ON_HAND, description=f"Units on hand, 0 to {MAX_ON_HAND:,}.")]
TtlSeconds = Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS, description="Seconds the reservation holds.")]


# -- HTTP bodies of the admin routes (the messages below add the product id) ---------------


class RestockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: Quantity


class SetStockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on_hand: OnHand


# -- lane commands ------------------------------------------------------------------------


class StockCommand(Message):
    """A command on one product's lane: ``product_id`` is the lane key."""

    kind: ClassVar[str]
    product_id: ProductId


class ReserveStock(StockCommand):
    """Hold ``quantity`` for an order until committed, released, or ``ttl_seconds`` pass.

    Reserving a reservation id that is still held answers like the first time (no second hold).
    """

    kind: ClassVar[str] = "reserve"
    reservation_id: ReservationId
    order_id: OrderId
    quantity: Quantity
    ttl_seconds: TtlSeconds = DEFAULT_TTL_SECONDS


class CommitReservation(StockCommand):
    """The order is paid: the reserved units leave stock for good."""

    kind: ClassVar[str] = "commit"
    reservation_id: ReservationId


class ReleaseReservation(StockCommand):
    """The order is cancelled: the reserved units become available again."""

    kind: ClassVar[str] = "release"
    reservation_id: ReservationId


class Restock(StockCommand):
    """Add units to what is on hand (admin)."""

    subject: ClassVar[str] = subjects.INVENTORY_RESTOCK
    kind: ClassVar[str] = "restock"
    quantity: Quantity


class SetStock(StockCommand):
    """Set what is on hand after a count (admin); refused below what is reserved."""

    subject: ClassVar[str] = subjects.INVENTORY_SET_STOCK
    kind: ClassVar[str] = "set_stock"
    on_hand: OnHand


class InitStock(StockCommand):
    """A product was created in the catalog: give it a stock row (with ``stock`` units, once)."""

    kind: ClassVar[str] = "init"
    stock: OnHand | None = None


# -- queries ------------------------------------------------------------------------------


class GetStock(Message):
    subject: ClassVar[str] = subjects.INVENTORY_STOCK_GET
    product_id: ProductId


class GetStocks(Message):
    subject: ClassVar[str] = subjects.INVENTORY_STOCKS_GET
    product_ids: list[ProductId] = Field(max_length=MAX_STOCKS_PER_QUERY)


class StockLevel(BaseModel):
    """A product's stock. A product inventory has never heard of reads as all zeros."""

    product_id: str
    on_hand: int
    reserved: int
    available: int = Field(description="on_hand - reserved: what can be bought now.")


class StockLevels(BaseModel):
    items: list[StockLevel] = Field(description="One per product asked for, in the order asked.")


# -- replies of lane commands -------------------------------------------------------------


class ReservationHeld(BaseModel):
    """Reply to :class:`ReserveStock`; a repeat of a held reservation gets the same one."""

    status: Literal["reserved"] = "reserved"
    reservation_id: str
    order_id: str
    quantity: int
    expires_at: datetime
    available: int | None = None
    """Units left for others once this is held (None in replies recorded before it was added)."""


class ReservationEnded(BaseModel):
    """Reply to :class:`CommitReservation` and :class:`ReleaseReservation`."""

    status: Literal["committed", "released", "expired"]
    reservation_id: str
    quantity: int


# -- events -------------------------------------------------------------------------------


class StockEvent(Message):
    product_id: str
    on_hand: int
    reserved: int
    available: int
    version: int | None = None
    """The stock's version after this change (None from senders before it was added)."""


class ReservationEvent(StockEvent):
    reservation_id: str
    order_id: str
    quantity: int


class StockReserved(ReservationEvent):
    subject: ClassVar[str] = subjects.INVENTORY_RESERVED
    expires_at: datetime


class StockReleased(ReservationEvent):
    subject: ClassVar[str] = subjects.INVENTORY_RELEASED


class StockCommitted(ReservationEvent):
    subject: ClassVar[str] = subjects.INVENTORY_COMMITTED


class ReservationExpired(ReservationEvent):
    subject: ClassVar[str] = subjects.INVENTORY_EXPIRED


class StockChanged(StockEvent):
    """On hand changed by the shop: a product's first stock, a restock or a count."""

    subject: ClassVar[str] = subjects.INVENTORY_STOCK_CHANGED
    reason: Literal["created", "restocked", "set"]


class OutOfStock(StockEvent):
    """Nothing is available any more (published when ``available`` drops to 0)."""

    subject: ClassVar[str] = subjects.INVENTORY_OUT_OF_STOCK
