"""Who is calling (a secret or a publishable key) and answers in Stripe's shape."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cartwheel.paymentserver.upstream import Answer

RATE_LIMITED = ("Too many requests hit the API too quickly. We recommend an exponential backoff of your "
                "requests.")


@dataclass(frozen=True)
class Caller:
    key: str

    @property
    def secret(self) -> bool:
        return self.key.startswith("sk_") and len(self.key) > 5

    @property
    def publishable(self) -> bool:
        return self.key.startswith("pk_") and len(self.key) > 5


def header_key(headers: Mapping[str, str]) -> str:
    """The API key in ``Authorization`` (``Bearer sk_...``, or Basic with the key as user), or ''."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme == "Bearer":
        return value.strip()
    if scheme == "Basic":
        try:
            return base64.b64decode(value).decode().split(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def caller(headers: Mapping[str, str], key_param: str | None = None) -> Caller:
    """The caller's key: from ``Authorization``, else the ``key`` parameter a browser sends."""
    return Caller(header_key(headers) or key_param or "")


def json_answer(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body, indent=2, sort_keys=True) + "\n", status=status,
                        content_type="application/json", headers=headers)


def stripe_error(status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"type": kind, "message": message}
    error |= {"code": code} if code else {}
    error |= {"param": param} if param else {}
    return json_answer({"error": error}, status, headers)


def unauthorized(who: Caller) -> web.Response:
    if not who.key:
        return stripe_error(401, "You did not provide an API key.")
    return stripe_error(401, f"Invalid API Key provided: {who.key[:8]}{'*' * 8}")


def no_such_intent(intent_id: str) -> web.Response:
    return stripe_error(404, f"No such payment_intent: '{intent_id}'", code="resource_missing", param="intent")


def wrong_client_secret() -> web.Response:
    """Stripe's words; 404 as for an intent it cannot find (a publishable key reveals no other intent)."""
    return stripe_error(404, "The client_secret provided does not match the client_secret associated with the "
                        "PaymentIntent.", code="resource_missing", param="client_secret")


def rate_limited(wait: float) -> web.Response:
    """429 as Stripe answers it, with ``Retry-After`` in whole seconds (at least 1)."""
    return stripe_error(429, RATE_LIMITED, code="rate_limit", headers={"Retry-After": str(max(1, math.ceil(wait)))})


def upstream_down() -> web.Response:
    return stripe_error(502, "The embedded payment server (localstripe) did not answer.", kind="api_error")


def relay(answer: Answer, shown: Any = None) -> web.Response:
    """localstripe's answer as it came, or with ``shown`` as its body."""
    if shown is not None:
        return json_answer(shown, answer.status)
    return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type or None)
