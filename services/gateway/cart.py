"""Cart routes: the shopper's cart, kept by the cart service, found by :func:`current_shopper`.

A signed-in shopper's cart is the one their account names, on every device, and needs no cookie.
A visitor is known by the signed ``cart`` cookie: without a (valid) one they see an empty cart and
get no cookie; the first add names a new cart and hands its cookie out, so reading never creates anything.
"""

from __future__ import annotations

from pydantic import Field, TypeAdapter

from cartwheel.contracts.base import Message
from cartwheel.contracts.cart import (
    AddItemBody,
    AddToCart,
    CartView,
    ChangeQuantity,
    GetCart,
    ProductRef,
    QuantityBody,
    RemoveFromCart,
)
from cartwheel.errors import DomainError, NotFound
from services.gateway.api import Routes
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.cookies import cart_cookie, is_valid, new_cart_id
from services.gateway.session import Shopper, cart_of_signed_in, current_shopper

routes = Routes(tag="cart")

# A cart belongs to one visitor: no shared cache may keep it.
NO_STORE = {"Cache-Control": "no-store"}
_PRODUCT_REF = TypeAdapter(ProductRef)


class CartOut(CartView):
    id: str | None = Field(description="Null until the first item is added (no cart exists yet).")  # type: ignore[assignment]

    @classmethod
    def empty(cls) -> CartOut:
        return cls(id=None, items=[], item_count=0, total_cents=0, currency=None, status="active")


Answer = tuple[CartOut, dict[str, str]]


@routes.get(
    "/api/cart",
    summary="The visitor's cart (empty, with a null id, until something is added)",
    response=CartOut,
    errors=(503,),
)
def get_cart() -> Answer:
    cart_id = current_shopper().cart_id
    if cart_id is None:
        return CartOut.empty(), NO_STORE
    return ask_cart(GetCart(tenant=current_tenant(), cart_id=cart_id)), NO_STORE


@routes.post(
    "/api/cart/items",
    summary="Add a product to the cart (starts a cart and sets its cookie)",
    body=AddItemBody,
    response=CartOut,
    errors=(404, 409, 503),
)
def add_item(body: AddItemBody) -> Answer:
    shopper = current_shopper()
    cart_id = cart_of_signed_in(shopper) if shopper.signed_in else shopper.cart_id or new_cart_id()
    try:
        return _add(cart_id, shopper, body), _headers(shopper, cart_id)
    except DomainError as refusal:
        if refusal.code != "cart_closed":
            raise
    # The cookie or the account names a cart that was merged or checked out: start a new one.
    cart_id = cart_of_signed_in(shopper, closed=cart_id) if shopper.signed_in else new_cart_id()
    return _add(cart_id, shopper, body), _headers(shopper, cart_id)


def _add(cart_id: str, shopper: Shopper, body: AddItemBody) -> CartOut:
    tenant = current_tenant()
    return ask_cart(AddToCart(tenant=tenant, cart_id=cart_id, email=shopper.email, **body.model_dump()))


@routes.patch(
    "/api/cart/items/{product_id}",
    summary="Set a line's quantity (0 removes it)",
    body=QuantityBody,
    response=CartOut,
    errors=(404, 409, 503),
)
def change_quantity(product_id: str, body: QuantityBody) -> Answer:
    shopper, cart_id = _existing_cart(product_id)
    message = ChangeQuantity(
        tenant=current_tenant(), cart_id=cart_id, product_id=product_id, quantity=body.quantity
    )
    return ask_cart(message), _headers(shopper, cart_id)


@routes.route(
    "DELETE",
    "/api/cart/items/{product_id}",
    summary="Remove a line from the cart",
    response=CartOut,
    errors=(404, 409, 503),
)
def remove_item(product_id: str) -> Answer:
    shopper, cart_id = _existing_cart(product_id)
    message = RemoveFromCart(tenant=current_tenant(), cart_id=cart_id, product_id=product_id)
    return ask_cart(message), _headers(shopper, cart_id)


def _existing_cart(product_id: str) -> tuple[Shopper, str]:
    """The shopper's cart id for a change to one of its lines; 404 when there is no cart or no such line can be."""
    shopper = current_shopper()
    if shopper.cart_id is None:
        raise NotFound("no cart")
    if not is_valid(_PRODUCT_REF, product_id):  # not a product id at all, so not in the cart
        raise NotFound("no such product in the cart")
    return shopper, shopper.cart_id


def _headers(shopper: Shopper, cart_id: str) -> dict[str, str]:
    if shopper.signed_in:  # the session names their cart; a cookie would outlive signing out
        return NO_STORE
    return {**NO_STORE, "Set-Cookie": cart_cookie(cart_id)}  # also renews the cookie's Max-Age


def ask_cart(message: Message) -> CartOut:
    return CartOut.model_validate(gateway().bus.request(message))
