"""Page cursors leave the gateway signed with the shop's secret: a client can hand back only one it was given.

A service's cursor (the catalog's position, an order or a cart id) goes out as ``<cursor>.<signature>``;
one that comes back made up, edited or signed with another secret is a 422 on ``cursor`` and reaches no
service (a forged catalog position once overflowed SQLite's integers: a 500).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from itsdangerous import BadSignature, Signer

from services.gateway.cookies import secret
from services.gateway.errors import invalid_value

CURSOR_SALT = "cartwheel.cursor"


def signed(cursor: str | None) -> str | None:
    """The cursor a client may hand back (None stays None: that was the last page)."""
    return None if cursor is None else _signer(secret()).sign(cursor).decode()


def verified(cursor: str | None) -> str | None:
    """The service's cursor inside one this shop signed; a 422 on ``cursor`` for any other."""
    if cursor is None:
        return None
    try:
        return _signer(secret()).unsign(cursor).decode()
    except BadSignature:
        raise invalid_value("cursor", "not a cursor this shop handed out") from None


@lru_cache(maxsize=256)
def _signer(key: str) -> Signer:
    return Signer(key, salt=CURSOR_SALT, digest_method=hashlib.sha256)
