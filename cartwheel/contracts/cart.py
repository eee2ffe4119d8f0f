"""Messages owned by the cart service.

A cart is a lane key (``CART_LANE``): every edit of one cart, from any tab or device, is a
lane command applied in order. Lane commands carry what the cart service looked up before
sending them (the product as it is now, and how many are available), because the lane's
handler is pure: prices are snapshotted at add time, and later changes don't touch the cart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from cartwheel import subjects
from cartwheel.contracts.base import Message, PageCursor

CART_LANE = subjects.CART_LANE
MAX_LINES = 100
MAX_LINE_QUANTITY = 999

CartId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ProductRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
LineQuantity = Annotated[StrictInt, Field(ge=1, le=MAX_LINE_QUANTITY, description="1 to 999 per line.")]
NewQuantity = Annotated[StrictInt, Field(ge=0, le=MAX_LINE_QUANTITY, description="0 removes the line.")]
CartStatus = Literal["active", "abandoned", "merged", "checked_out", "expired"]


class ProductSnapshot(BaseModel):
    """The product as the cart service found it when the shopper added it."""

    model_config = ConfigDict(frozen=True)

    product_id: str
    sku: str
    name: str
    unit_price_cents: int
    currency: str
    active: bool


class CartLine(BaseModel):
    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int


class CartView(BaseModel):
    """The cart as shoppers and the gateway see it (API.md ``GET /api/cart``)."""

    id: str
    items: list[CartLine]
    item_count: int
    total_cents: int
    currency: str | None
    status: CartStatus
    updated_at: datetime | None = None
    version: int = Field(0, description="Rises with every change of the cart: of two copies, the higher is newer.")


# -- lane commands (kind) -------------------------------------------------------------------


class CartCommand(Message):
    kind: ClassVar[str]
    cart_id: CartId


class AddItem(CartCommand):
    kind: ClassVar[str] = "add"
    product: ProductSnapshot
    quantity: LineQuantity
    available: StrictInt = Field(ge=0, description="Units available when the service looked.")
    email: str | None = Field(None, description="The signed-in owner: their cart is never forgotten.")


class SetQuantity(CartCommand):
    kind: ClassVar[str] = "set_quantity"
    product_id: ProductRef
    quantity: NewQuantity
    available: StrictInt | None = Field(None, ge=0, description="Checked when the quantity grows.")


class RemoveItem(CartCommand):
    kind: ClassVar[str] = "remove"
    product_id: ProductRef


class ClearCart(CartCommand):
    kind: ClassVar[str] = "clear"


class CheckOut(CartCommand):
    """The order placed from this cart is paid: the cart closes (``checked_out``). Repeats answer the same."""

    kind: ClassVar[str] = "check_out"
    order_id: str


class MergedLine(BaseModel):
    product: ProductSnapshot
    quantity: int


class MergeAway(CartCommand):
    """First half of a merge, on the anonymous cart: it closes (``merged``) and hands its lines over."""

    kind: ClassVar[str] = "merge_away"
    into: CartId


class AbsorbCart(CartCommand):
    """Second half, on the user's cart: take the lines, capped by ``available`` and by the product as it is now."""

    kind: ClassVar[str] = "absorb"
    source_cart_id: CartId
    lines: list[MergedLine] = Field(max_length=MAX_LINES)
    available: dict[str, StrictInt] = Field(description="Units available per product when the service looked.")
    for_sale: dict[str, bool] = Field(description="Whether each product is active now.")
    email: str | None = None


# -- requests to the cart service (core request/reply; the service looks products up) --------


class GetCart(Message):
    subject: ClassVar[str] = subjects.CART_GET
    cart_id: CartId


class AddToCart(Message):
    subject: ClassVar[str] = subjects.CART_ADD
    cart_id: CartId
    product_id: ProductRef
    quantity: LineQuantity
    email: str | None = Field(None, description="The signed-in shopper's email: the cart is theirs, never forgotten.")


class ChangeQuantity(Message):
    subject: ClassVar[str] = subjects.CART_SET
    cart_id: CartId
    product_id: ProductRef
    quantity: NewQuantity


class RemoveFromCart(Message):
    subject: ClassVar[str] = subjects.CART_REMOVE
    cart_id: CartId
    product_id: ProductRef


class ListCarts(Message):
    """Admin: carts by status, a page at a time, in cart id order."""

    subject: ClassVar[str] = subjects.CART_LIST
    status: CartStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    after: CartId | None = None


class MergeCarts(Message):
    """Login: move the anonymous cart's lines into the user's cart (which may not exist yet).

    Quantities add, the user's existing snapshot price wins, each line is capped by what is
    available; the anonymous cart becomes ``merged``. Safe to retry: the same pair merges once.
    """

    subject: ClassVar[str] = subjects.CART_MERGE
    source_cart_id: CartId
    target_cart_id: CartId
    email: str | None = None


class MergeAdjustment(BaseModel):
    """A line of the anonymous cart that did not move in full, and why."""

    product_id: str
    sku: str
    name: str
    requested: int = Field(description="Units the merged line would have held.")
    quantity: int = Field(description="Units it holds (0: the line was left out).")
    reason: Literal["out_of_stock", "line_limit", "quantity_limit", "currency_mismatch", "not_for_sale"]
    available: int | None = None


class MergeResult(BaseModel):
    cart: CartView
    adjustments: list[MergeAdjustment] = Field(default_factory=list)


class CartPage(BaseModel):
    items: list[CartView]
    next_cursor: str | None = None


class CartListQuery(BaseModel):
    """``GET /api/admin/carts?status=&limit=&cursor=``."""

    model_config = ConfigDict(extra="forbid")

    status: CartStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: PageCursor | None = None


class AddItemBody(BaseModel):
    """``POST /api/cart/items``."""

    model_config = ConfigDict(extra="forbid")

    product_id: ProductRef
    quantity: LineQuantity = 1


class QuantityBody(BaseModel):
    """``PATCH /api/cart/items/{product_id}``."""

    model_config = ConfigDict(extra="forbid")

    quantity: NewQuantity


# -- events -----------------------------------------------------------------------------------


class CartUpdated(Message):
    subject: ClassVar[str] = subjects.CART_UPDATED
    cart: CartView


class CartAbandoned(Message):
    subject: ClassVar[str] = subjects.CART_ABANDONED
    cart: CartView
    email: str | None = None


class CartMerged(Message):
    """The anonymous cart ``source_cart_id`` was merged into the user's cart (``cart``, as it is after)."""

    subject: ClassVar[str] = subjects.CART_MERGED
    source_cart_id: str
    cart: CartView
    email: str | None = None
    adjustments: list[MergeAdjustment] = Field(default_factory=list)


class CartCheckedOut(Message):
    """The cart's order was paid: the cart is closed; the shopper's next add starts a new cart."""

    subject: ClassVar[str] = subjects.CART_CHECKED_OUT
    cart: CartView
    order_id: str
    email: str | None = None
