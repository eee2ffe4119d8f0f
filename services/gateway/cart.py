"""Cart routes: the visitor's cart, found by the signed ``cart`` cookie, kept by the cart service.

A visitor without a (valid) cookie sees an empty cart and gets no cookie; the first add names a
new cart and hands its cookie out, so reading never creates anything.
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
from cartwheel.errors import NotFound
from services.gateway.api import Routes
from services.gateway.context import gateway
from services.gateway.cookies import cart_cookie, cart_id_from_cookie, is_valid, new_cart_id

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
    cart_id = cart_id_from_cookie()
    if cart_id is None:
        return CartOut.empty(), NO_STORE
    return _ask(GetCart(tenant=gateway().settings.tenant, cart_id=cart_id)), NO_STORE


@routes.post(
    "/api/cart/items",
    summary="Add a product to the cart (starts a cart and sets its cookie)",
    body=AddItemBody,
    response=CartOut,
    errors=(404, 409, 503),
)
def add_item(body: AddItemBody) -> Answer:
    cart_id = cart_id_from_cookie() or new_cart_id()
    cart = _ask(AddToCart(tenant=gateway().settings.tenant, cart_id=cart_id, **body.model_dump()))
    return cart, {**NO_STORE, "Set-Cookie": cart_cookie(cart_id)}  # also renews the cookie's Max-Age


@routes.patch(
    "/api/cart/items/{product_id}",
    summary="Set a line's quantity (0 removes it)",
    body=QuantityBody,
    response=CartOut,
    errors=(404, 409, 503),
)
def change_quantity(product_id: str, body: QuantityBody) -> Answer:
    cart_id = _existing_cart(product_id)
    message = ChangeQuantity(
        tenant=gateway().settings.tenant, cart_id=cart_id, product_id=product_id, quantity=body.quantity
    )
    return _ask(message), {**NO_STORE, "Set-Cookie": cart_cookie(cart_id)}


@routes.route(
    "DELETE",
    "/api/cart/items/{product_id}",
    summary="Remove a line from the cart",
    response=CartOut,
    errors=(404, 409, 503),
)
def remove_item(product_id: str) -> Answer:
    cart_id = _existing_cart(product_id)
    message = RemoveFromCart(tenant=gateway().settings.tenant, cart_id=cart_id, product_id=product_id)
    return _ask(message), {**NO_STORE, "Set-Cookie": cart_cookie(cart_id)}


def _existing_cart(product_id: str) -> str:
    """The cookie's cart id for a change to one of its lines; 404 when there is no cart or no such line can be."""
    cart_id = cart_id_from_cookie()
    if cart_id is None:
        raise NotFound("no cart")
    if not is_valid(_PRODUCT_REF, product_id):  # not a product id at all, so not in the cart
        raise NotFound("no such product in the cart")
    return cart_id


def _ask(message: Message) -> CartOut:
    return CartOut.model_validate(gateway().bus.request(message))
