"""Who is shopping: the signed-in user of the ``session`` cookie, else the visitor of the ``cart`` cookie.

The session cookie holds a random token signed with the cookie secret (its own salt), so a forged
cookie is refused without a database look-up; the server keeps the token's hash with an expiry,
so signing out (or the expiry) ends the session even for a copy of the cookie.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import lru_cache

from flask import g, request
from itsdangerous import BadData, URLSafeSerializer

from services.gateway import store
from services.gateway.context import gateway
from services.gateway.cookies import cart_id_from_cookie, new_cart_id, private_cookie, secret
from services.gateway.store import User

SESSION_COOKIE = "session"
SESSION_SALT = "cartwheel.session"
_SHOPPER = "cartwheel_shopper"


@dataclass(frozen=True)
class Shopper:
    """Whose cart a request works on. ``cart_id`` is None until there is one."""

    cart_id: str | None
    email: str | None = None
    user_id: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.user_id is not None


def current_shopper() -> Shopper:
    """This request's shopper: the signed-in user's cart and email, else the cart cookie's cart (or none)."""
    if _SHOPPER not in g:
        user = signed_in_user()
        shopper = Shopper(user.cart_id, user.email, user.id) if user else Shopper(cart_id_from_cookie())
        setattr(g, _SHOPPER, shopper)
    return g.get(_SHOPPER)


def cart_of_signed_in(shopper: Shopper, closed: str | None = None) -> str:
    """The signed-in shopper's cart id, naming a new cart for them on their first add, or in place of
    their cart ``closed`` (checked out or merged)."""
    assert shopper.user_id is not None
    if shopper.cart_id and shopper.cart_id != closed:
        return shopper.cart_id
    cart_id = store.give_cart(shopper.user_id, new_cart_id(), replacing=closed)
    setattr(g, _SHOPPER, replace(shopper, cart_id=cart_id))
    return cart_id


def signed_in_user() -> User | None:
    token = session_token()
    return store.user_of_session(token) if token else None


def session_token() -> str | None:
    """The token of this request's session cookie; None when there is none or it does not verify."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    try:
        token = _serializer(secret()).loads(value)
    except BadData:
        return None
    return token if isinstance(token, str) and 0 < len(token) <= 128 else None


def start_session(user_id: str) -> str:
    """Sign ``user_id`` in: the ``Set-Cookie`` value of their new session."""
    token = secrets.token_urlsafe(32)
    max_age = gateway().settings.session_max_age_seconds
    store.start_session(token, user_id, store.now() + timedelta(seconds=max_age))
    return private_cookie(SESSION_COOKIE, _serializer(secret()).dumps(token), max_age)


def end_session() -> None:
    """Sign out: the session of this request's cookie ends on the server, whoever holds a copy."""
    token = session_token()
    if token:
        store.end_session(token)


@lru_cache(maxsize=256)
def _serializer(key: str) -> URLSafeSerializer:
    return URLSafeSerializer(key, salt=SESSION_SALT)
