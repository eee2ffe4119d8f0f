"""A service's databases, one per tenant: the installation's own always open, every other tenant's opened on
first use and kept in a bounded least-recently-used set, so 1,000 tenants never hold 1,000 pools open."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from cartwheel.db import Database, head_revision
from cartwheel.errors import NotFound
from cartwheel.settings import Settings
from cartwheel.statements import Statements, read_file
from cartwheel.tenants import context
from cartwheel.tenants.names import NAME

T = TypeVar("T")

CLOSE_AFTER_S = 30.0
"""An evicted tenant's database is closed this long after: work that took it just before still finishes on it."""
UPKEEP_CLOSE_AFTER_S = 5.0
"""The same for one only upkeep opened (a sweep of a quiet tenant): a round takes a few milliseconds."""
TENANT_POOL_SIZE = 2
"""Connections per tenant database beyond the first few (PostgreSQL allows 100 by default, in all)."""


class UnknownTenant(NotFound):
    """A message for a tenant this installation has no databases for (never registered, or deleted)."""

    code = "unknown_tenant"


def existing_database_url(settings: Settings, service: str, tenant: str) -> str:
    """``tenant``'s ``service`` database, if it can have one: :class:`UnknownTenant` for a name that is not a
    tenant's, or a SQLite file that was never made (opening it would make an empty one)."""
    if not NAME.fullmatch(tenant):
        raise UnknownTenant(f"no tenant {tenant!r}")
    url = settings.database_url(service, tenant)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        raise UnknownTenant(f"no tenant {tenant!r} (no {service} database: `cartwheel tenants create`)")
    return url


class TenantDatabases:
    """``service``'s database of each tenant. ``on_open(tenant, db)`` runs when one opens, ``on_close(tenant, db)``
    before one closes (its relay, say), ``on_closed()`` after one or more closed."""

    def __init__(self, service: str, settings: Settings, *, pool_size: int = 10,
                 on_open: Callable[[str, Database], None] | None = None,
                 on_close: Callable[[str, Database], None] | None = None,
                 on_closed: Callable[[], None] | None = None,
                 gone: Callable[[str], bool] | None = None) -> None:
        self.service = service
        self.settings = settings
        self.own_name = settings.tenant
        self.own = Database(settings.database_url(service), pool_size=pool_size)
        self.capacity = settings.tenant_databases_open
        self.on_open, self.on_close, self.on_closed = on_open, on_close, on_closed
        self.gone = gone or (lambda tenant: False)  # being deleted (or unregistered): refused, let go of
        self._open: OrderedDict[str, Database] = OrderedDict()
        self._closing: list[tuple[float, str, Database]] = []
        self._upkeep_only: OrderedDict[str, Database] = OrderedDict()  # open, and only upkeep has used them
        self._upkeep_used: dict[str, float] = {}  # ... when it last did
        self._let_go: set[Database] = set()  # closing because their tenant is being deleted: never revived
        self._lock = threading.Lock()  # the gateway's worker threads open tenants' databases too
        self._executors: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self.opened = 0  # databases opened after the own one: the LRU's misses

    def of(self, tenant: str) -> Database:
        """``tenant``'s database, opened now if it is not open; :class:`UnknownTenant` if it has none."""
        if tenant == self.own_name:
            return self.own
        background = context.in_background()
        with self._lock:
            db = self._open.get(tenant)
            if db is not None:
                if not background:
                    self._open.move_to_end(tenant)
                return db
            db = self._upkeep_only.pop(tenant, None)
            if db is not None and not background:  # a shopper's now: kept like any other
                self._upkeep_used.pop(tenant, None)
                self._open[tenant] = db
                return db
            if db is not None:
                self._upkeep_only[tenant] = db
                self._upkeep_used[tenant] = time.monotonic()
                return db
            if self.gone(tenant):  # being deleted: not opened again, not even from those closing
                raise UnknownTenant(f"no tenant {tenant!r} (it is being deleted)")
            db = self._revive(tenant) or self._open_new(tenant)
            # Upkeep's (a sweep of a quiet tenant) are closed first and sooner: busy tenants' stay open.
            (self._upkeep_only if background else self._open)[tenant] = db
            if background:
                self._upkeep_used[tenant] = time.monotonic()
            evicted = self._evict()
        if self.on_open is not None and db is not None:
            self.on_open(tenant, db)
        for name, old in evicted:
            if self.on_close is not None:
                self.on_close(name, old)
        self._reap()
        return db

    def current(self) -> Database:
        """The database of the tenant whose work is in hand (:mod:`cartwheel.tenants.context`)."""
        return self.of(context.current(self.own_name))

    def closed_file(self, tenant: str) -> Path | None:
        """``tenant``'s SQLite file while its database is not open here (None: open, the own one, or on a server),
        for a look that need not open it; :class:`UnknownTenant` if it has none."""
        if tenant == self.own_name:
            return None
        if self.gone(tenant):
            raise UnknownTenant(f"no tenant {tenant!r} (it is being deleted)")
        with self._lock:
            if tenant in self._open or tenant in self._upkeep_only:
                return None
        parsed = make_url(existing_database_url(self.settings, self.service, tenant))
        return Path(parsed.database or "") if parsed.get_backend_name() == "sqlite" else None

    async def read_closed(self, tenant: str, work: Callable[[Statements], T]) -> T | None:
        """``work`` on ``tenant``'s SQLite file while its database is not open here, read on a connection of its own
        off the loop (:func:`~cartwheel.statements.read_file`) so that upkeep finding nothing to do leaves it closed.
        None: open here (or the own one, or on a server: open it), or the read failed (an older schema, a file
        still being made: opening it tells). :class:`UnknownTenant` if it has none."""
        path = self.closed_file(tenant)
        if path is None:
            return None
        try:
            return await asyncio.to_thread(read_file, path, work)
        except DBAPIError:
            return None

    def busy(self, tenant: str) -> bool:
        """Open for a shopper's work (not only upkeep's): its upkeep keeps the pace that work asks."""
        with self._lock:
            return tenant == self.own_name or tenant in self._open

    def all_open(self) -> list[tuple[str, Database]]:
        with self._lock:
            return [(self.own_name, self.own), *self._open.items(), *self._upkeep_only.items()]

    def let_go(self, tenant: str) -> bool:
        """Close ``tenant``'s database now (its relay sends what is pending first); whether it was open."""
        with self._lock:
            db = self._open.pop(tenant, None) or self._upkeep_only.pop(tenant, None)
            self._upkeep_used.pop(tenant, None)
            if db is not None:  # closed once its relay had time to send what is pending
                self._closing.append((time.monotonic() + UPKEEP_CLOSE_AFTER_S, tenant, db))
                self._let_go.add(db)
        if db is not None and self.on_close is not None:
            self.on_close(tenant, db)
        self._reap()
        return db is not None

    def _open_new(self, tenant: str) -> Database:
        url = existing_database_url(self.settings, self.service, tenant)
        if self._executors is None:
            self._executors = (ThreadPoolExecutor(8, thread_name_prefix="tenant-db"),
                               ThreadPoolExecutor(2, thread_name_prefix="tenant-db-write"))
        db = Database(url, pool_size=TENANT_POOL_SIZE, executors=self._executors)
        try:
            revision = db.read_sync(lambda s: s.execute(text("SELECT version_num FROM alembic_version")).scalar())
        except Exception:  # no such table: never migrated
            revision = None
        if revision != head_revision(self.service):  # a failed or missing migration: refused, not half served
            db.close()
            raise UnknownTenant(f"tenant {tenant!r}: its {self.service} database is not migrated to this version "
                                f"({revision or 'none'}; `cartwheel migrate --all-tenants`)")
        self.opened += 1
        return db

    def _revive(self, tenant: str) -> Database | None:
        for n, (_, name, db) in enumerate(self._closing):
            if name == tenant and db not in self._let_go:  # one let go of may have no files any more
                del self._closing[n]
                return db
        return None

    def _evict(self) -> list[tuple[str, Database]]:
        """Upkeep's databases idle for :data:`UPKEEP_CLOSE_AFTER_S`, then the least recently used beyond the
        capacity; closing ones beyond the capacity are closed at once (they count toward what is open)."""
        evicted = []
        now = time.monotonic()
        for name in [n for n, at in self._upkeep_used.items() if now - at >= UPKEEP_CLOSE_AFTER_S]:
            evicted.append((name, self._upkeep_only.pop(name)))
            del self._upkeep_used[name]
            self._closing.append((now, name, evicted[-1][1]))
        while len(self._open) + len(self._upkeep_only) > self.capacity:
            if self._upkeep_only:
                name, db = self._upkeep_only.popitem(last=False)
                self._upkeep_used.pop(name, None)
                grace = UPKEEP_CLOSE_AFTER_S
            else:
                name, db = self._open.popitem(last=False)
                grace = CLOSE_AFTER_S
            self._closing.append((now + grace, name, db))
            evicted.append((name, db))
        if len(self._closing) > self.capacity:  # never more than twice the capacity open, whatever the churn
            self._closing.sort(key=lambda item: item[0])
            for n in range(len(self._closing) - self.capacity):
                self._closing[n] = (0.0, *self._closing[n][1:])
        return evicted

    def _reap(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(name, db) for at, name, db in self._closing if everything or at <= now]
            self._closing = [item for item in self._closing if not (everything or item[0] <= now)]
        for _, db in due:
            self._let_go.discard(db)
            db.close()
        if due and self.on_closed is not None:
            self.on_closed()

    def close(self) -> None:
        with self._lock:
            for name, db in [*self._open.items(), *self._upkeep_only.items()]:
                self._closing.append((0.0, name, db))
            self._open.clear()
            self._upkeep_only.clear()
            self._upkeep_used.clear()
        self._reap(everything=True)
        self.own.close()
        if self._executors is not None:
            for executor in self._executors:
                executor.shutdown(wait=True)

    def __getattr__(self, name: str) -> Any:
        """``service.db.run(...)`` and the rest: the current tenant's database's."""
        return getattr(self.current(), name)
