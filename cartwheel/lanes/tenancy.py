"""Lanes with a database per tenant: whose database a command applies in, and a batch split by tenant.

A partition's commands may belong to many tenants. Each tenant's database keeps its own cursor per partition
(``lane_cursors``: every command of that tenant up to it is applied there); the installation's own tenant's
cursor is also the partition's low-water mark (every command up to it, of any tenant, is applied), because its
part of a batch commits last. README, "Lanes with a database per tenant".
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Mapping
from typing import Any

from cartwheel import subjects
from cartwheel.lanes.store import Incoming

FAULT_ENV = "CARTWHEEL_LANES_TEST_FAULT"
"""Tests only: ``kill-between-tenants`` makes a replica SIGKILL itself after it committed one tenant's part of a
batch and before the next part (the crash the per-tenant cursors are for)."""
KILL_BETWEEN_TENANTS = "kill-between-tenants"


def tenant_of(headers: Mapping[str, str], body: Mapping[str, Any], own: str) -> str | None:
    """The tenant a command is for: its header, else its body's ``tenant`` (commands sent before the header);
    None for the installation's own tenant (the common case: nothing more to do)."""
    tenant = headers.get(subjects.LANE_TENANT_HEADER) or body.get("tenant")
    return None if not isinstance(tenant, str) or tenant == own else tenant


def split_by_tenant(batch: list[Incoming]) -> dict[str | None, list[Incoming]]:
    """Each tenant's commands of ``batch``, in stream order; tenants in order of their first command (None: the
    own tenant's)."""
    parts: dict[str | None, list[Incoming]] = {}
    for item in batch:
        part = parts.get(item.tenant)
        if part is None:
            parts[item.tenant] = [item]
        else:
            part.append(item)
    return parts


def unknown_tenant_reply(tenant: str) -> bytes:
    """The answer to a command for a tenant without databases here (never registered, deleted, a bad name)."""
    error = {"code": "unknown_tenant", "message": f"no tenant {tenant[:80]!r} here"}
    return json.dumps({"ok": False, "data": None, "error": error}, separators=(",", ":")).encode()


_NO_DATABASE = re.compile(r'database "[^"]*" does not exist')


def missing_database(error: Exception) -> bool:
    """PostgreSQL refused the connection: the tenant's database does not exist (psycopg gives no SQLSTATE for a
    failed connection, so the server's English message is read)."""
    return bool(_NO_DATABASE.search(str(error)))


def fault(point: str) -> None:
    """Die here, as a SIGKILL would, when a test asked for it (:data:`FAULT_ENV`)."""
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
