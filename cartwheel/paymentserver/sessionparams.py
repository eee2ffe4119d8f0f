"""``POST /v1/checkout/sessions``'s parameters read and checked as Stripe checks them (pure).

The subset Cartwheel's shop uses: ``mode=payment``, ``line_items`` with ``price_data``, the URLs,
``expires_at``, ``client_reference_id``, ``customer_email``, ``metadata`` and
``payment_intent_data[metadata|receipt_email]``. Anything else is refused by name, so a call that
real Stripe would read differently fails here first.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.sessions import CheckoutSession, Line, new_id

DAY = 24 * 3600
PAGE_PREFIX = "/c/pay/"
IGNORED = frozenset({"expand", "payment_method_types", "locale", "submit_type", "billing_address_collection"})
_KEY = re.compile(r"[^\[\]]+|\[([^\[\]]*)\]")
_INTEGER = re.compile(r"-?[0-9]+")


class SessionRefused(ValueError):
    """A 400 ``invalid_request_error`` about ``param``, in Stripe's words."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Window:
    """How far ahead ``expires_at`` may be: Stripe takes 30 minutes to 24 hours (the least is an option here)."""

    least: int = 1800
    most: int = DAY

    def check(self, expires_at: int, now: int) -> None:
        if expires_at - now < self.least:
            raise SessionRefused(f"The `expires_at` timestamp must be at least {_span(self.least)} from Checkout "
                                 "Session creation.", "expires_at")
        if expires_at - now > self.most:
            raise SessionRefused("The `expires_at` timestamp must be less than 24 hours from Checkout Session "
                                 "creation.", "expires_at")


def session_from(params: Params, *, now: int, window: Window, base_url: str) -> CheckoutSession:
    """The new session ``params`` ask for; :class:`SessionRefused` for what Stripe would refuse."""
    tree = nest(params)
    for name in tree.keys() - IGNORED - {"mode", "line_items", "success_url", "cancel_url", "expires_at",
                                         "client_reference_id", "customer_email", "metadata", "payment_intent_data"}:
        raise SessionRefused(_unknown(name), name)
    if (mode := _text(tree, "mode", required=True)) != "payment":
        raise SessionRefused(f"The embedded payment server takes mode=payment only, not {mode}.", "mode")
    lines, currency = _lines(tree.get("line_items"))
    expires_at = _integer(tree, "expires_at", default=now + DAY)
    window.check(expires_at, now)
    intent = _mapping(tree, "payment_intent_data", {"metadata", "receipt_email"})
    session_id = new_id("cs_test_", 58)
    return CheckoutSession(
        id=session_id, created=now, expires_at=expires_at, currency=currency, lines=lines,
        success_url=_url(tree, "success_url"), cancel_url=_url(tree, "cancel_url"),
        page_url=f"{base_url.rstrip('/')}{PAGE_PREFIX}{session_id}",
        client_reference_id=_text(tree, "client_reference_id"), customer_email=_email(tree, "customer_email"),
        metadata=_metadata(tree, "metadata"), intent_metadata=_metadata(intent, "metadata", "payment_intent_data"),
        receipt_email=_email(intent, "receipt_email", "payment_intent_data"),
        request_digest=request_digest(params))


def request_digest(params: Params) -> str:
    """What an Idempotency-Key is checked against: the same key must come with the same parameters."""
    return hashlib.sha256(params.encode().encode()).hexdigest()


def nest(params: Params) -> dict[str, Any]:
    """``line_items[0][quantity]=2`` → ``{"line_items": {"0": {"quantity": "2"}}}`` (``a[]`` as key ``""``)."""
    tree: dict[str, Any] = {}
    for key, value in params.pairs:
        parts = [match.group(1) if match.group(1) is not None else match.group(0) for match in _KEY.finditer(key)]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[parts[-1]] = value
    return tree


def _lines(items: Any) -> tuple[list[Line], str]:
    if not isinstance(items, dict) or not items:
        raise SessionRefused("Missing required param: line_items.", "line_items")
    lines, currencies = [], set()
    for index, item in sorted(items.items(), key=lambda pair: int(pair[0]) if pair[0].isdigit() else -1):
        where = f"line_items[{index}]"
        if not index.isdigit() or not isinstance(item, dict):
            raise SessionRefused(_unknown(where), where)
        if "price" in item:
            raise SessionRefused("The embedded payment server takes price_data only, not a price id.",
                                 f"{where}[price]")
        _only(item, {"price_data", "quantity"}, where)
        price = _mapping(item, "price_data", {"currency", "unit_amount", "product_data"}, where, required=True)
        product = _mapping(price, "product_data", {"name"}, f"{where}[price_data]", required=True)
        currencies.add(_currency(price, f"{where}[price_data]"))
        lines.append(Line(name=_text(product, "name", f"{where}[price_data][product_data]", required=True) or "",
                          unit_amount=_integer(price, "unit_amount", f"{where}[price_data]", least=0),
                          quantity=_integer(item, "quantity", where, least=1)))
    if len(currencies) > 1:
        raise SessionRefused("All line items must have the same currency.", "line_items")
    if sum(line.amount for line in lines) < 1:
        raise SessionRefused("The Checkout Session's total amount due must be greater than 0.", "line_items")
    return lines, currencies.pop()


def _name(where: str, key: str) -> str:
    return f"{where}[{key}]" if where else key


def _unknown(param: str) -> str:
    return (f"Received unknown parameter: {param} (the embedded payment server takes a subset of Stripe's Checkout "
            "Session API)")


def _only(tree: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in tree.keys() - allowed:
        raise SessionRefused(_unknown(_name(where, key)), _name(where, key))


def _mapping(tree: dict[str, Any], key: str, allowed: set[str], where: str = "", *,
             required: bool = False) -> dict[str, Any]:
    found = tree.get(key)
    if found is None and not required:
        return {}
    if not isinstance(found, dict):
        raise SessionRefused(f"Missing required param: {_name(where, key)}.", _name(where, key))
    _only(found, allowed, _name(where, key))
    return found


def _text(tree: dict[str, Any], key: str, where: str = "", *, required: bool = False) -> str | None:
    found = tree.get(key)
    if isinstance(found, dict) or (required and not found):
        raise SessionRefused(f"Missing required param: {_name(where, key)}.", _name(where, key))
    return found or None


def _integer(tree: dict[str, Any], key: str, where: str = "", *, default: int | None = None, least: int = 0) -> int:
    found = _text(tree, key, where, required=default is None)
    if found is None and default is not None:
        return default
    if not _INTEGER.fullmatch(found or ""):
        raise SessionRefused(f"Invalid integer: {found}", _name(where, key))
    if int(found or "0") < least:
        raise SessionRefused(f"This value must be greater than or equal to {least}.", _name(where, key))
    return int(found or "0")


def _currency(tree: dict[str, Any], where: str) -> str:
    found = (_text(tree, "currency", where, required=True) or "").lower()
    if len(found) != 3 or not found.isalpha():
        raise SessionRefused(f"Invalid currency: {found}.", _name(where, "currency"))
    return found


def _url(tree: dict[str, Any], key: str) -> str:
    found = _text(tree, key, required=True) or ""
    parts = urllib.parse.urlsplit(found)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SessionRefused("Not a valid URL", key)
    return found


def _email(tree: dict[str, Any], key: str, where: str = "") -> str | None:
    found = _text(tree, key, where)
    if found is not None and ("@" not in found or any(ch.isspace() for ch in found)):
        raise SessionRefused(f"Invalid email address: {found}", _name(where, key))
    return found


def _metadata(tree: dict[str, Any], key: str, where: str = "") -> dict[str, str]:
    found = tree.get(key) or {}
    if not isinstance(found, dict) or any(isinstance(value, dict) for value in found.values()):
        raise SessionRefused(f"Invalid object: {_name(where, key)}", _name(where, key))
    return {name: value for name, value in found.items() if value}  # an empty value sets nothing, as at Stripe


def _span(seconds: int) -> str:
    return f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"
