"""The registry's mirror in a NATS KV bucket: written by ``cartwheel tenants`` (and ``cartwheel up`` at start),
read by the gateway and the services through a live :class:`Directory`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError, NoKeysError

from cartwheel import natsauth, subjects
from cartwheel.kvmirror import KvMirror
from cartwheel.settings import Settings
from cartwheel.tenants.names import normal_host
from cartwheel.tenants.registry import Registry, Tenant

PREFIX = subjects.tenant_key("")


@dataclass(frozen=True)
class Entry:
    """A tenant as the gateway and the services see it."""

    name: str
    active: bool
    hosts: tuple[str, ...]
    settings: dict[str, Any]
    admin_token_hash: str | None
    deleting: bool = False
    """Being deleted: every process lets go of its databases and refuses its messages."""


def _entry(key: str, value: bytes) -> Entry | None:
    data = json.loads(value)
    return Entry(data["name"], data["status"] == "active", tuple(data["hosts"]), data.get("settings", {}),
                 data.get("admin_token_hash"), data["status"] == "deleting")


async def publish(nc: NatsClient, tenants: list[Tenant], removed: list[str] = ()) -> None:  # type: ignore[assignment]
    kv = await nc.jetstream().key_value(subjects.TENANTS_BUCKET)
    for tenant in tenants:
        await kv.put(subjects.tenant_key(tenant.name), json.dumps(tenant.public()).encode())
    for name in removed:
        await kv.delete(subjects.tenant_key(name))


async def sync(settings: Settings, registry: Registry) -> int:
    """Make the bucket say what the registry says (as admin): every tenant put, every other key deleted."""
    nc = await nats.connect(settings.nats_servers, connect_timeout=3, max_reconnect_attempts=1, reconnect_time_wait=0.2,
                            error_cb=_quiet,
                            **natsauth.connect_options(settings, natsauth.ADMIN))
    try:
        tenants = registry.list()
        kv = await nc.jetstream().key_value(subjects.TENANTS_BUCKET)
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        wanted = {subjects.tenant_key(t.name) for t in tenants}
        stale = [key.removeprefix(PREFIX) for key in keys if key not in wanted]
        await publish(nc, tenants, stale)
        return len(tenants)
    finally:
        await nc.close()


async def _quiet(_error: Exception) -> None:
    """nats-py prints every failed attempt with its traceback; the caller says it once, in one line."""


def sync_now(settings: Settings, registry: Registry) -> str | None:
    """:func:`sync` from synchronous code: None, or why the running shop could not be told (it is told at its
    next start)."""
    try:
        asyncio.run(sync(settings, registry))
    except (OSError, TimeoutError, nats.errors.Error, KeyNotFoundError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def own_hosts(settings: Settings) -> tuple[frozenset[str], bool]:
    """The hosts the installation's own tenant serves (``default_tenant_hosts``, loopback and the public URL's
    host), and whether it also takes every host no tenant names (``*``)."""
    listed = [h.strip() for h in settings.default_tenant_hosts.split(",") if h.strip()]
    public = [urlsplit(settings.public_url).netloc] if settings.public_url else []
    return frozenset(normal_host(h) for h in (*listed, *LOOPBACK, *public) if h != "*"), "*" in listed


def tenant_at(host: str, by_host: Mapping[str, Entry], own: str, own_hosts: frozenset[str],
              own_takes_any: bool) -> str | None:
    """Which tenant serves ``host``: the registered one that names it (None while it is disabled), else the
    installation's own for its hosts (or any host, with ``*``), else None."""
    host = normal_host(host)
    entry = by_host.get(host)
    if entry is not None:
        return entry.name if entry.active else None
    return own if host in own_hosts or own_takes_any else None


class Directory:
    """Which tenant a host belongs to, and each tenant's entry, from a live copy of the bucket."""

    def __init__(self, settings: Settings, client: Callable[[], NatsClient | None]) -> None:
        self.own = settings.tenant
        self.own_hosts, self.own_takes_any = own_hosts(settings)
        self.mirror: KvMirror[Entry] = KvMirror(subjects.TENANTS_BUCKET, client, _entry)
        self._by_host: dict[str, Entry] = {}
        self._indexed = -1

    def tenant_of(self, host: str) -> str | None:
        """The tenant serving ``host`` (a request's Host), or None: no tenant, or one disabled."""
        return tenant_at(host, self._index(), self.own, self.own_hosts, self.own_takes_any)

    def names(self) -> list[str]:
        """Every active registered tenant (the installation's own is not registered)."""
        return [entry.name for entry in self.mirror.values() if entry.active]

    def upkept(self) -> list[str]:
        """Every registered tenant, disabled ones too: a disabled shop's open orders still expire and refund."""
        return [entry.name for entry in self.mirror.values() if not entry.deleting]

    def gone(self, tenant: str) -> bool:
        """``tenant`` is being deleted: every process lets go of its databases and refuses its messages."""
        entry = self.entry(tenant) if tenant != self.own else None
        return entry is not None and entry.deleting

    def registered(self, tenant: str) -> bool:
        """The installation's own, or a tenant registered and not being deleted (as far as the copy says)."""
        if tenant == self.own:
            return True
        entry = self.entry(tenant)
        return entry is not None and not entry.deleting

    def entry(self, name: str) -> Entry | None:
        return self.mirror.get(subjects.tenant_key(name))

    def _index(self) -> dict[str, Entry]:
        if self._indexed != self.mirror.revision:  # rebuilt on a change only: a lookup is one dict get
            revision = self.mirror.revision
            self._by_host = {host: entry for entry in self.mirror.values() for host in entry.hosts}
            self._indexed = revision
        return self._by_host
