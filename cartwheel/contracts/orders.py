"""Messages owned by the orders service, the owner of the checkout saga and the order state machine.

An order moves ``pending → reserved → awaiting_payment → paid → fulfilled``, or ends
``cancelled``, ``expired`` or ``refunded``; ``payment_failed`` (a declined card) holds its stock
until the reservation ends, ``needs_review`` waits for a person, ``disputed`` for a chargeback to
close (``paid`` again, or ``dispute_lost``). Every transition and the event it causes are written
in one transaction (services/orders/domain.py has the whole state machine).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cartwheel import subjects
from cartwheel.contracts.base import Message, PageCursor
from cartwheel.contracts.cart import MAX_LINES, CartId, LineQuantity, ProductRef
from cartwheel.contracts.payments import PaymentMethodId

OrderStatus = Literal[
    "pending",
    "reserved",
    "awaiting_payment",
    "paid",
    "fulfilled",
    "cancelled",
    "expired",
    "payment_failed",
    "needs_review",
    "disputed",
    "dispute_lost",
    "refunded",
]
OrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")]


class CheckoutItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: ProductRef
    quantity: LineQuantity


class CheckoutBody(BaseModel):
    """``POST /api/checkout``: the cart, or ``items`` (buy now)."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(
        None,
        max_length=320,
        description="Receipt address; the signed-in user's by default.",
        json_schema_extra={"format": "email"},
    )
    items: list[CheckoutItem] | None = Field(None, min_length=1, max_length=MAX_LINES)
    accept_price_changes: bool = Field(False, description="Check out at today's prices if they moved since adding.")
    mode: Literal["elements", "hosted"] = Field(
        "elements", description="`elements`: pay in the shop's page with Stripe.js (`payment.client_secret`); "
        "`hosted`: pay on Stripe's checkout page (`payment.checkout_url`)."
    )


class PayBody(BaseModel):
    """``POST /api/orders/{id}/pay``: confirm the order's payment with a payment method (e.g. ``pm_card_visa``)."""

    model_config = ConfigDict(extra="forbid")

    payment_method: PaymentMethodId


class OrderListQuery(BaseModel):
    """``GET /api/orders`` and ``GET /api/admin/orders?status=&limit=&cursor=``."""

    model_config = ConfigDict(extra="forbid")

    status: OrderStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: PageCursor | None = None


# -- requests to the orders service ---------------------------------------------------------


ORDER_ID = "{ORDER_ID}"
"""In a hosted checkout's ``return_url``: replaced by the new order's id."""


def order_number(order_id: str) -> str:
    """What a buyer reads (mails, "my orders"): the id without its prefix, shortened; links carry the whole id."""
    return order_id.removeprefix("ord_")[:10].upper()


class Checkout(Message):
    """Place an order: from ``cart_id`` when ``items`` is None. ``idempotency_key`` (scoped to the buyer: the
    user, else the cart, else ``visitor_id``) makes a retried checkout answer with the same order."""

    subject: ClassVar[str] = subjects.ORDERS_CHECKOUT
    cart_id: CartId | None = None
    items: list[CheckoutItem] | None = None
    user_id: str | None = None
    visitor_id: CartId | None = None  # an anonymous buyer's browser (the id its cart cookie holds), issued by us
    email: str | None = None
    accept_price_changes: bool = False
    idempotency_key: IdempotencyKey | None = None
    mode: Literal["elements", "hosted"] = "elements"
    return_url: str | None = Field(None, max_length=1000, description="Hosted: where the checkout page sends the "
                                   "buyer back; `{ORDER_ID}` in it becomes the order's id (:data:`ORDER_ID`).")


class GetOrder(Message):
    subject: ClassVar[str] = subjects.ORDERS_GET
    order_id: OrderId


class ListOrders(Message):
    """A user's orders (``user_id``), or any orders (admin), newest first, optionally by status."""

    subject: ClassVar[str] = subjects.ORDERS_LIST
    user_id: str | None = None
    status: OrderStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: OrderId | None = None


class CancelQuery(BaseModel):
    """``POST /api/admin/orders/{id}/cancel?restock=``."""

    model_config = ConfigDict(extra="forbid")

    restock: bool = Field(True, description="A paid order's units go back on hand (false: they were shipped).")


class CancelOrder(Message):
    """Admin cancel: an unpaid order releases its stock; a paid one is refunded, its units back on hand
    only with ``restock``."""

    subject: ClassVar[str] = subjects.ORDERS_CANCEL
    order_id: OrderId
    reason: str = "cancelled by an admin"
    restock: bool = True


class PayOrder(Message):
    """Confirm the order's PaymentIntent with ``payment_method`` (through payments)."""

    subject: ClassVar[str] = subjects.ORDERS_PAY
    order_id: OrderId
    payment_method: PaymentMethodId
    return_url: str | None = Field(None, max_length=2000, description="Where a method that redirects the buyer (a "
                                   "bank's page) sends them back; Stripe wants one when the intent takes every "
                                   "method the account offers.")


# -- replies --------------------------------------------------------------------------------


class OrderLine(BaseModel):
    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int
    digital: bool = Field(False, description="A file the buyer downloads once the order is paid (links on the "
                          "order's page and in the confirmation mail).")


class PaymentInfo(BaseModel):
    provider: Literal["stripe"] = "stripe"
    payment_intent_id: str | None = None
    client_secret: str | None = None
    status: str | None = Field(None, description="The PaymentIntent's status as last heard.")
    last_error: str | None = None
    checkout_session_id: str | None = Field(None, description="Hosted checkout: the order's Stripe Checkout Session.")
    checkout_url: str | None = Field(None, description="Hosted checkout: send the buyer here to pay (while the "
                                     "order awaits payment).")


class OrderTransition(BaseModel):
    status: OrderStatus
    at: datetime
    reason: str | None = None


class OrderView(BaseModel):
    """An order as buyers and admins see it (API.md ``GET /api/orders/{id}``)."""

    order_id: str
    status: OrderStatus
    lines: list[OrderLine]
    total_cents: int
    currency: str
    email: str | None = None
    user_id: str | None = None
    cart_id: str | None = None
    payment: PaymentInfo = Field(default_factory=PaymentInfo)
    refunded_cents: int = Field(0, description="Refunded so far; a partial refund leaves the status as it was.")
    reserved_until: datetime | None = None
    created_at: datetime
    updated_at: datetime
    history: list[OrderTransition] = Field(default_factory=list)


class OrderPage(BaseModel):
    items: list[OrderView]
    next_cursor: str | None = None


class PriceChange(BaseModel):
    product_id: str
    sku: str
    name: str
    old_unit_price_cents: int
    new_unit_price_cents: int


class ShortLine(BaseModel):
    product_id: str
    requested: int
    available: int


# -- events ---------------------------------------------------------------------------------


class OrderCreated(Message):
    subject: ClassVar[str] = subjects.ORDERS_CREATED
    order: OrderView


class OrderStatusChanged(Message):
    """Every transition: ``order`` as it is after, and the status it left."""

    subject: ClassVar[str] = subjects.ORDERS_STATUS_CHANGED
    order: OrderView
    previous: OrderStatus
    reason: str | None = None


class OrderPaid(Message):
    subject: ClassVar[str] = subjects.ORDERS_PAID
    order: OrderView
