"""The admin bearer token: compared in constant time, never logged.

Each tenant has its own: at the installation's own tenant, ``CARTWHEEL_ADMIN_TOKEN``; at another tenant's host, the
token ``cartwheel tenants create`` printed (the directory holds its sha256 only). The installation's token
administers its own tenant only: a tenant's shop data is its owner's, and one leaked token must not open every shop.
"""

from __future__ import annotations

import hmac

from flask import request

from cartwheel.tenants.registry import token_hash
from services.gateway import ratelimit
from services.gateway.context import gateway, tenant
from services.gateway.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cartwheel-admin"'}
AS_ADMIN = "cartwheel.as_admin"
"""Environ key the admin pages set on their own calls to the API (a signed-in admin's), holding the tenant they
act for; a client can't set it (its headers arrive as ``HTTP_*`` keys)."""


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer ...`` header; None when there is no bearer header."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def is_admin() -> bool:
    """True for a valid admin token, False without a bearer token; a wrong token is a 401, and counts against
    the client's address like a wrong token on the admin sign-in page: past the limit, 429 with Retry-After."""
    if request.environ.get(AS_ADMIN) == tenant():
        return True
    token = bearer_token()
    if token is None:
        return False
    address = ratelimit.client_address()
    ratelimit.refuse_admin_guesses(address)
    if not is_admin_token(token):
        ratelimit.count_wrong_admin_token(address)
        raise ApiError(401, "unauthorized", "the admin token is not valid", CHALLENGE)
    return True


def is_admin_token(token: str) -> bool:
    """``token`` is the admin token of the request's tenant (compared in constant time)."""
    key = admin_key()
    given = token if tenant() == gateway().settings.tenant else token_hash(token)
    return bool(key) and hmac.compare_digest(given.encode(), key.encode())


def admin_key() -> str:
    """What the request's tenant's admin token is checked against: the installation's token for its own tenant,
    the token's sha256 for another ("": none, no admin)."""
    ctx = gateway()
    name = tenant()
    if name == ctx.settings.tenant:
        return ctx.settings.admin_token.get_secret_value() if ctx.settings.admin_token else ""
    entry = ctx.hosts.entry(name)
    return (entry.admin_token_hash or "") if entry is not None else ""


def require_admin() -> None:
    if not is_admin():
        raise ApiError(401, "unauthorized", "this needs the admin token (Authorization: Bearer ...)", CHALLENGE)
