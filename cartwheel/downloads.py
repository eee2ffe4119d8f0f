"""Signed, expiring download links of a paid order's digital products.

A link names the order, the product and when it stops working, signed (HMAC-SHA256) with the
installation's secret and the tenant's name: the gateway serves the file only for a link it (or the
notifications service, for a mail) made, before its time is up, for an order still paid. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal
from urllib.parse import urlencode

PREFIX = "/api/downloads"
Verdict = Literal["ok", "expired", "forged"]


def signature(secret: str, tenant: str, order_id: str, product_id: str, expires: int) -> str:
    message = f"cartwheel.download\n{tenant}\n{order_id}\n{product_id}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def path(secret: str, tenant: str, order_id: str, product_id: str, expires: int) -> str:
    """The link's path and query (``expires``: Unix seconds)."""
    sig = signature(secret, tenant, order_id, product_id, expires)
    return f"{PREFIX}/{order_id}/{product_id}?" + urlencode({"expires": expires, "sig": sig})


def check(secret: str, tenant: str, order_id: str, product_id: str, expires: int, sig: str, now: float) -> Verdict:
    """Whether a link may be served at ``now``: a forged (or altered) one before an expired one."""
    if not hmac.compare_digest(signature(secret, tenant, order_id, product_id, expires).encode(), sig.encode()):
        return "forged"
    return "ok" if now < expires else "expired"
