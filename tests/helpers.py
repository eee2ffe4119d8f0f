"""Unique ids for tests, so tests never collide on a shared NATS server or database."""

from __future__ import annotations

import uuid


def _suffix() -> str:
    return uuid.uuid4().hex[:12]


def random_sku(prefix: str = "sku") -> str:
    return f"{prefix}-{_suffix()}"


def random_email() -> str:
    return f"shopper-{_suffix()}@example.test"


def random_tenant() -> str:
    return f"tenant-{_suffix()}"
