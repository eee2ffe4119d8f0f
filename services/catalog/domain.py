"""Catalog rules, free of I/O: what a change does to a product, and how page cursors read."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cartwheel.contracts.catalog import ProductPatch
from cartwheel.errors import Invalid


def changes(current: dict[str, Any], patch: ProductPatch) -> dict[str, Any]:
    """The fields ``patch`` really changes (same value → no change, no new version)."""
    wanted = patch.model_dump(exclude_unset=True)
    return {field: value for field, value in wanted.items() if current.get(field) != value}


def encode_cursor(last_seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_seq}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """Position after which the next page starts; a cursor a client made up is a 422, not a 500."""
    if not cursor:
        return 0
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        after = None
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise Invalid("cursor is not one this API handed out", fields=[{"field": "cursor", "message": "invalid"}])
    return after
