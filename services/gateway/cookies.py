"""The cart cookie: a cart id signed with the cookie secret, so a visitor can only name a cart the gateway gave out.

Its value is ``URLSafeSerializer(secret, salt=CART_SALT).dumps(cart_id)``; anything that does not verify
(missing, tampered, signed with another secret or salt, not a cart id) reads as "no cart".
The ``orders`` cookie lists the orders this browser placed (newest first) the same way, under ORDERS_SALT.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from functools import lru_cache

from flask import request
from itsdangerous import BadData, URLSafeSerializer
from pydantic import TypeAdapter
from werkzeug.http import dump_cookie

from cartwheel.contracts.cart import CartId
from cartwheel.contracts.orders import OrderId
from services.gateway.context import gateway, tenant

CART_COOKIE = "cart"
CART_SALT = "cartwheel.cart"
CART_COOKIE_MAX_AGE = 90 * 24 * 3600  # longer than the cart service keeps an untouched anonymous cart
ORDERS_COOKIE = "orders"
ORDERS_SALT = "cartwheel.orders"
ORDERS_COOKIE_MAX_AGE = 365 * 24 * 3600
ORDERS_KEPT = 20  # the newest; keeps the cookie well under browsers' 4 KB
_CART_ID = TypeAdapter(CartId)
_ORDER_ID = TypeAdapter(OrderId)


def new_cart_id() -> str:
    return uuid.uuid4().hex


def cart_id_from_cookie() -> str | None:
    """The cart id of this request's signed cookie; None when there is none or it does not verify."""
    value = request.cookies.get(CART_COOKIE)
    if not value:
        return None
    try:
        cart_id = _serializer(secret()).loads(value)
    except BadData:
        return None
    return cart_id if is_valid(_CART_ID, cart_id) else None


def is_valid(adapter: TypeAdapter[str], value: object) -> bool:
    """Whether ``value`` is a string the (strict) adapter accepts."""
    if not isinstance(value, str):
        return False
    try:
        adapter.validate_python(value, strict=True)
    except ValueError:
        return False
    return True


def cart_cookie(cart_id: str) -> str:
    """The ``Set-Cookie`` value that hands ``cart_id`` to the browser."""
    return private_cookie(CART_COOKIE, _serializer(secret()).dumps(cart_id), CART_COOKIE_MAX_AGE)


def orders_from_cookie() -> list[str]:
    """The ids of the orders this browser placed, newest first; empty when the cookie does not verify."""
    value = request.cookies.get(ORDERS_COOKIE)
    if not value:
        return []
    try:
        order_ids = _serializer(secret(), ORDERS_SALT).loads(value)
    except BadData:
        return []
    if not isinstance(order_ids, list):
        return []
    return [order_id for order_id in order_ids[:ORDERS_KEPT] if is_valid(_ORDER_ID, order_id)]


def orders_cookie(order_id: str) -> str:
    """The ``Set-Cookie`` value that adds ``order_id`` to this browser's orders."""
    order_ids = [order_id, *(known for known in orders_from_cookie() if known != order_id)][:ORDERS_KEPT]
    return private_cookie(ORDERS_COOKIE, _serializer(secret(), ORDERS_SALT).dumps(order_ids), ORDERS_COOKIE_MAX_AGE)


def private_cookie(name: str, value: str, max_age: int) -> str:
    """A ``Set-Cookie`` value scripts cannot read, sent on this site's own navigations only."""
    return dump_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=gateway().settings.cookie_secure,
        httponly=True,
        samesite="Lax",
    )


def cleared_cookie(name: str) -> str:
    """The ``Set-Cookie`` value that makes the browser drop ``name``."""
    return private_cookie(name, "", 0)


def installation_secret() -> str:
    """``CARTWHEEL_SECRET`` itself: what download and unsubscribe links are signed with (with the tenant's name
    inside what they sign, so one shop's link is nothing at another)."""
    key = gateway().settings.secret
    if key is None:  # get_settings() always fills it; only a hand-made Settings can lack it
        raise RuntimeError("the gateway has no secret (CARTWHEEL_SECRET)")
    return key.get_secret_value()


def secret() -> str:
    """The key every gateway cookie (and cursor) of the request's tenant is signed with: the secret itself for the
    installation's own tenant, a key derived from it and the tenant's name for another, so nothing one shop
    signed verifies at another (a session or cart cookie copied to another host reads as none)."""
    key, name = installation_secret(), tenant()
    return key if name == gateway().settings.tenant else _tenant_key(key, name)


@lru_cache(maxsize=1024)
def _tenant_key(secret: str, tenant: str) -> str:
    return hmac.new(secret.encode(), f"cartwheel.tenant:{tenant}".encode(), hashlib.sha256).hexdigest()


@lru_cache(maxsize=256)
def _serializer(key: str, salt: str = CART_SALT) -> URLSafeSerializer:
    return URLSafeSerializer(key, salt=salt)
