"""Catalog rules, free of I/O: what a change does to a product, search terms, and how page cursors read."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from cartwheel.contracts.catalog import ProductPatch
from cartwheel.errors import Invalid

MAX_TERMS = 16
MAX_SQL_INTEGER = 2**63 - 1  # a cursor's numbers beyond SQL's BIGINT would overflow the query (a 500)
_WORD = re.compile(r"[^\W_]+")  # letters and digits: what both full-text tokenizers keep as words


def changes(current: dict[str, Any], patch: ProductPatch) -> dict[str, Any]:
    """The fields ``patch`` really changes (same value → no change, no new version)."""
    wanted = patch.model_dump(exclude_unset=True)
    return {field: value for field, value in wanted.items() if current.get(field) != value}


def search_terms(q: str | None) -> list[str]:
    """The words of a search box, lower-cased; punctuation separates words (``CW-MUG-01`` → cw, mug, 01)."""
    return _WORD.findall((q or "").lower())[:MAX_TERMS]


def resolve_sort(sort: str | None, searching: bool) -> str:
    """The order of a listing: relevance when searching, newest otherwise; relevance without words is newest."""
    if sort is None or (sort == "relevance" and not searching):
        return "relevance" if searching else "newest"
    return sort


@dataclass(frozen=True)
class Position:
    """Where a page ended: the sort it was in, the last product's sort key and its seq (the tie-breaker)."""

    sort: str
    key: int | str | None
    seq: int


def encode_cursor(position: Position) -> str:
    raw = json.dumps({"s": position.sort, "k": position.key, "i": position.seq}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Position | None:
    """The position after which the next page starts; a cursor a client made up is a 422, not a 500.

    Cursors handed out before sorting existed (``{"after": seq}``) continue in insertion order.
    """
    if not cursor:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError):
        data = None
    position = _position(data) if isinstance(data, dict) else None
    if position is None:
        raise Invalid("cursor is not one this API handed out", fields=[{"field": "cursor", "message": "invalid"}])
    return position


def _position(data: dict[str, Any]) -> Position | None:
    if set(data) == {"after"}:
        data = {"s": "oldest", "k": None, "i": data["after"]}
    sort, key, seq = data.get("s"), data.get("k"), data.get("i")
    if not _natural(seq) or sort not in SORT_KEYS:
        return None
    kind = SORT_KEYS[sort]
    if kind is None and key is not None:
        return None
    if kind is int and not _natural(key):
        return None
    if kind is str and not (isinstance(key, str) and len(key) <= 200):
        return None
    return Position(sort, key, seq)


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SQL_INTEGER


# The type of each sort's key (None: the seq alone orders the listing).
SORT_KEYS: dict[str, type | None] = {
    "relevance": int,
    "newest": None,
    "oldest": None,
    "price_asc": int,
    "price_desc": int,
    "name": str,
}
