"""The admin bearer token: compared in constant time, never logged."""

from __future__ import annotations

import hmac

from flask import request

from services.gateway import ratelimit
from services.gateway.context import gateway
from services.gateway.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cartwheel-admin"'}


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer ...`` header; None when there is no bearer header."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def is_admin() -> bool:
    """True for a valid admin token, False without a bearer token; a wrong token is a 401, and counts against
    the client's address like a wrong token on the admin sign-in page: past the limit, 429 with Retry-After."""
    token = bearer_token()
    if token is None:
        return False
    address = ratelimit.client_address()
    ratelimit.refuse_admin_guesses(address)
    expected = gateway().settings.admin_token
    secret = expected.get_secret_value() if expected else ""
    if not secret or not hmac.compare_digest(token.encode(), secret.encode()):
        ratelimit.count_wrong_admin_token(address)
        raise ApiError(401, "unauthorized", "the admin token is not valid", CHALLENGE)
    return True


def require_admin() -> None:
    if not is_admin():
        raise ApiError(401, "unauthorized", "this needs the admin token (Authorization: Bearer ...)", CHALLENGE)
