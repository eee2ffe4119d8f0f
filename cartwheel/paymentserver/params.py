"""Stripe request parameters as form pairs (``card[number]=...``, ``expand[]=...``): read, changed, re-encoded.

The SDKs send forms; a browser script may send JSON. Both become the same ordered pairs, so the
stand-in reads and rewrites one shape and forwards a form, which localstripe reads as Stripe does.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

Pair = tuple[str, str]


def flatten(value: Any, prefix: str = "") -> list[Pair]:
    """JSON as form pairs: ``{"card": {"cvc": "123"}}`` → ``[("card[cvc]", "123")]``, lists as ``key[]``."""
    if isinstance(value, Mapping):
        pairs: list[Pair] = []
        for key, item in value.items():
            pairs += flatten(item, f"{prefix}[{key}]" if prefix else str(key))
        return pairs
    if isinstance(value, list):
        return [pair for item in value for pair in flatten(item, f"{prefix}[]")]
    if isinstance(value, bool):
        return [(prefix, "true" if value else "false")]
    return [] if value is None else [(prefix, str(value))]


def as_bool(value: str | None) -> bool:
    return (value or "").lower() == "true"


class Params:
    """Ordered form pairs with the few operations the stand-in needs."""

    def __init__(self, pairs: Iterable[Pair] = ()) -> None:
        self.pairs = list(pairs)

    @classmethod
    def from_body(cls, body: bytes, content_type: str) -> Params:
        """A form, or JSON whatever its type says (localstripe's stripe.js posts JSON as text/plain)."""
        if not body.strip():
            return cls()
        if content_type == "application/json" or body.lstrip().startswith(b"{"):
            try:
                return cls(flatten(json.loads(body)))
            except ValueError:
                if content_type == "application/json":
                    raise
        return cls(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))

    def get(self, key: str) -> str | None:
        return next((value for name, value in self.pairs if name == key), None)

    def pop(self, key: str) -> str | None:
        found = self.get(key)
        self.pairs = [(name, value) for name, value in self.pairs if name != key]
        return found

    def set(self, key: str, value: str) -> None:
        self.pop(key)
        self.pairs.append((key, value))

    def has_tree(self, name: str) -> bool:
        return any(key == name or key.startswith(f"{name}[") for key, _ in self.pairs)

    def pop_tree(self, name: str) -> Params:
        """Remove the ``name[...]`` pairs and return them one level down (``card[number]`` → ``number``)."""
        inner = [(_one_level_down(key[len(name) + 1:]), value) for key, value in self.pairs
                 if key.startswith(f"{name}[")]
        self.pairs = [(key, value) for key, value in self.pairs if not key.startswith(f"{name}[")]
        return Params(inner)

    def encode(self) -> str:
        return urllib.parse.urlencode(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)


def _one_level_down(rest: str) -> str:
    """``card][number]`` (what follows ``payment_method_data[``) → ``card[number]``."""
    head, _, tail = rest.partition("]")
    return head + tail
