"""Checkout and orders, through the orders service.

An order is shown to its buyer only: the signed-in user it belongs to, or the browser whose signed
``orders`` cookie lists it (an anonymous buyer); admins see every order. Anyone else gets the 404 of
an unknown order, so an order id tells a stranger nothing.
"""

from __future__ import annotations

from flask import request
from pydantic import BaseModel, Field, TypeAdapter
from werkzeug.datastructures import Headers

from cartwheel.contracts.base import Message
from cartwheel.contracts.orders import (
    ORDER_ID,
    CancelOrder,
    CancelQuery,
    Checkout,
    CheckoutBody,
    GetOrder,
    IdempotencyKey,
    ListOrders,
    OrderId,
    OrderListQuery,
    OrderPage,
    OrderStatus,
    OrderView,
    PayBody,
    PaymentInfo,
    PayOrder,
)
from cartwheel.errors import DomainError, NotFound
from services.gateway import cursors
from services.gateway.accounts import normalised_email
from services.gateway.api import Header, Link, Routes
from services.gateway.auth import is_admin
from services.gateway.cart import NO_STORE
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.cookies import cart_cookie, is_valid, new_cart_id, orders_cookie, orders_from_cookie
from services.gateway.errors import ApiError, invalid_value
from services.gateway.inventory import IDEMPOTENCY_HEADER
from services.gateway.session import current_shopper, signed_in_user

routes = Routes(tag="orders")
admin_routes = Routes(tag="admin")

_ORDER_ID = TypeAdapter(OrderId)
_IDEMPOTENCY_KEY = TypeAdapter(IdempotencyKey)
CHECKOUT_KEY = Header(
    IDEMPOTENCY_HEADER,
    "A retried checkout with the same key answers with the order the first one placed, to the same buyer only: "
    "the signed-in user, else the cart, else (a buy-now) the browser's cart cookie, which the first answer sets.",
    _IDEMPOTENCY_KEY.json_schema(),
)
SLOW = 2  # checkout reserves stock and creates a PaymentIntent; paying waits on Stripe: more than one hop each


class Placed(BaseModel):
    """``POST /api/checkout``: the new order (or the one an earlier try with the same Idempotency-Key placed)."""

    order_id: str
    status: OrderStatus
    total_cents: int
    currency: str
    payment: PaymentInfo = Field(description="Confirm `client_secret` with Stripe.js, or POST /api/orders/{id}/pay. "
                                 "Status `reserved` with payment status `queued`: the stock is held and the "
                                 "PaymentIntent waits its turn at Stripe's rate limit; `client_secret` follows in "
                                 "GET /api/orders/{id}, usually within seconds.")
    order: OrderView


@routes.post(
    "/api/checkout",
    summary="Place an order from the cart, or from `items` (optional Idempotency-Key header)",
    body=CheckoutBody,
    response=Placed,
    status=201,
    errors=(404, 409, 422, 503),
    headers=(CHECKOUT_KEY,),
    links=(
        Link("GetOrder", "orders.get_order", {"order_id": "$response.body#/order_id"}),
        Link("PayOrder", "orders.pay_order", {"order_id": "$response.body#/order_id"}),
        Link("CancelOrder", "orders.admin_cancel_order", {"order_id": "$response.body#/order_id"}),
    ),
)
def checkout(body: CheckoutBody) -> tuple[Placed, Headers]:
    ctx = gateway()
    key, email, shopper = _idempotency_key(), _email(body.email), current_shopper()
    cart_id = shopper.cart_id if body.items is None else None  # buying `items` leaves the cart alone
    if body.items is None and cart_id is None:
        raise DomainError("there is nothing to check out: the cart is empty", code="empty_cart")
    headers = Headers(NO_STORE)
    visitor = None
    if not shopper.signed_in and cart_id is None:  # an anonymous buy-now: its key is this browser's
        visitor = shopper.cart_id or new_cart_id()
        if visitor != shopper.cart_id:
            headers.add("Set-Cookie", cart_cookie(visitor))  # the browser's id from now on (its cart's, later)
    message = Checkout(
        tenant=current_tenant(),
        cart_id=cart_id,
        items=body.items,
        user_id=shopper.user_id,
        visitor_id=visitor,
        email=email or shopper.email,
        accept_price_changes=body.accept_price_changes,
        idempotency_key=key,
        mode=body.mode,
        return_url=_hosted_return(ctx.settings.public_url) if body.mode == "hosted" else None,
    )
    order = _ask(message, timeout=ctx.settings.request_timeout * SLOW)
    summary = order.model_dump(include={"order_id", "status", "total_cents", "currency", "payment"})
    placed = Placed(order=order, **summary)
    if not shopper.signed_in:  # a signed-in buyer's session shows their orders; a cookie would outlive signing out
        headers.add("Set-Cookie", orders_cookie(order.order_id))
    return placed, headers


def _hosted_return(public_url: str | None) -> str:
    """Where Stripe's checkout page sends the buyer back: never an address the request named (its Host header),
    or anyone could have a genuine Stripe page, in the shop's name, send buyers to a site of theirs."""
    if not public_url:
        raise DomainError("hosted checkout is not set up: the shop's address (CARTWHEEL_PUBLIC_URL) is unset",
                          code="payment_provider_unavailable")
    return _order_page(public_url)


def _order_page(public_url: str | None) -> str:
    """Where Stripe's checkout page sends the buyer back: the order's page in the storefront."""
    return f"{(public_url or request.host_url).rstrip('/')}/orders/{ORDER_ID}"


@routes.get(
    "/api/orders/{order_id}",
    summary="An order, to its buyer (session or this browser's orders cookie) or an admin",
    response=OrderView,
    errors=(404, 503),
    auth="optional",
)
def get_order(order_id: str) -> tuple[OrderView, dict[str, str]]:
    return _buyers_order(order_id, admin=is_admin()), NO_STORE


@routes.get(
    "/api/orders",
    summary="The signed-in shopper's orders, newest first",
    query=OrderListQuery,
    response=OrderPage,
    errors=(401, 503),
)
def list_orders(query: OrderListQuery) -> tuple[OrderPage, dict[str, str]]:
    user = signed_in_user()
    if user is None:
        raise ApiError(401, "unauthorized", "sign in to see your orders")
    return _page(query, user_id=user.id), NO_STORE


@routes.post(
    "/api/orders/{order_id}/pay",
    summary="Pay an order with a payment method (e.g. pm_card_visa); a decline shows in payment.last_error",
    body=PayBody,
    response=OrderView,
    errors=(404, 409, 503),
)
def pay_order(order_id: str, body: PayBody) -> tuple[OrderView, dict[str, str]]:
    ctx = gateway()
    if order_id not in orders_from_cookie():
        _buyers_order(order_id, admin=False)  # a signed-in buyer's, or a 404
    message = PayOrder(tenant=current_tenant(), order_id=order_id, payment_method=body.payment_method,
                       return_url=_order_page(ctx.settings.public_url).replace(ORDER_ID, order_id))
    return _ask(message, timeout=ctx.settings.request_timeout * SLOW), NO_STORE


@admin_routes.get(
    "/api/admin/orders",
    summary="Every order, newest first, optionally by status, a page at a time",
    query=OrderListQuery,
    response=OrderPage,
    errors=(503,),
    auth="admin",
)
def admin_list_orders(query: OrderListQuery) -> tuple[OrderPage, dict[str, str]]:
    return _page(query, user_id=None), NO_STORE


@admin_routes.post(
    "/api/admin/orders/{order_id}/cancel",
    summary="Cancel an order: unpaid, its stock is released; paid, it is refunded (its units back on hand "
    "unless restock=false)",
    query=CancelQuery,
    response=OrderView,
    errors=(400, 404, 409, 503),
    auth="admin",
)
def admin_cancel_order(order_id: str, query: CancelQuery) -> tuple[OrderView, dict[str, str]]:
    if not is_valid(_ORDER_ID, order_id):
        raise _unknown()
    ctx = gateway()
    message = CancelOrder(tenant=current_tenant(), order_id=order_id, restock=query.restock)
    return _ask(message, timeout=ctx.settings.request_timeout * SLOW), NO_STORE


def _buyers_order(order_id: str, *, admin: bool) -> OrderView:
    """The order if this request may see it (admin, the browser that placed it, the signed-in buyer), else 404."""
    if not is_valid(_ORDER_ID, order_id):
        raise _unknown()
    listed = order_id in orders_from_cookie()
    user = None if admin or listed else signed_in_user()
    if not (admin or listed or user):
        raise _unknown()
    try:
        order = _ask(GetOrder(tenant=current_tenant(), order_id=order_id))
    except DomainError as refusal:  # the bus raises every refusal as a DomainError with its code
        if refusal.code != "not_found":
            raise
        raise _unknown() from None
    if not (admin or listed or (user and order.user_id == user.id)):
        raise _unknown()
    return order


def _page(query: OrderListQuery, *, user_id: str | None) -> OrderPage:
    """A page of orders (one user's, or everyone's for the admin); cursors in and out are signed."""
    cursor = cursors.verified(query.cursor)
    message = ListOrders(tenant=current_tenant(), user_id=user_id, status=query.status, limit=query.limit,
                         cursor=cursor)
    page = OrderPage.model_validate(gateway().bus.request(message))
    return page.model_copy(update={"next_cursor": cursors.signed(page.next_cursor)})


def _unknown() -> NotFound:
    return NotFound("no such order")  # the same for an order that exists but is someone else's


def _ask(message: Message, timeout: float | None = None) -> OrderView:
    return OrderView.model_validate(gateway().bus.request(message, timeout=timeout))


def _email(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return normalised_email(value)
    except ValueError as error:
        raise invalid_value("email", str(error)) from None


def _idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not is_valid(_IDEMPOTENCY_KEY, key):
        raise invalid_value(IDEMPOTENCY_HEADER, "1 to 255 visible ASCII characters (no spaces)")
    return key
