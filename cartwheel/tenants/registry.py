"""The tenant registry: a small control database of tenants, their hosts and settings (``cartwheel tenants``).

The registry is the truth; the gateway and the services read its mirror in a NATS KV bucket
(:mod:`cartwheel.tenants.mirror`), which every change here is copied to.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cartwheel.db import CONTROL, make_engine, migrate
from cartwheel.money import known_locale
from cartwheel.tenants.models import HostRow, MigrationRow, TenantRow
from cartwheel.tenants.names import BadName, check_host, check_name

Status = Literal["active", "disabled", "deleting"]
SETTINGS = ("currency", "locale", "stripe_publishable_key")
"""What a tenant may set for itself (``--set currency=EUR``); everything else is the installation's."""


class TenantExists(ValueError):
    pass


class HostTaken(ValueError):
    pass


class NoSuchTenant(LookupError):
    pass


@dataclass(frozen=True)
class Tenant:
    name: str
    status: Status
    hosts: tuple[str, ...]
    created_at: datetime
    settings: dict[str, Any] = field(default_factory=dict)
    admin_token_hash: str | None = None

    def public(self) -> dict[str, Any]:
        """What the KV mirror carries (no secret: a token's hash only)."""
        return {"name": self.name, "status": self.status, "hosts": list(self.hosts), "settings": self.settings,
                "admin_token_hash": self.admin_token_hash}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_settings(pairs: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(pairs) - set(SETTINGS))
    if unknown:
        raise BadName(f"unknown tenant setting {', '.join(unknown)} (choose from {', '.join(SETTINGS)})")
    if "currency" in pairs and not (len(pairs["currency"]) == 3 and pairs["currency"].isalpha()):
        raise BadName(f"currency {pairs['currency']!r}: an ISO 4217 code such as EUR")
    checked = {k: (v.upper() if k == "currency" else v) for k, v in pairs.items()}
    if "locale" in checked:
        try:
            checked["locale"] = known_locale(checked["locale"])
        except ValueError as exc:
            raise BadName(str(exc)) from None
    return checked


class Registry:
    """The control database at ``url`` (migrated on first use)."""

    def __init__(self, url: str, *, reserved: Iterable[str] = ()) -> None:
        migrate(CONTROL, url)
        self.engine = make_engine(url, pool_size=2)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.reserved = frozenset(reserved)  # the installation's own tenant: not registered, always there

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def create(self, name: str, hosts: Iterable[str], settings: dict[str, str] | None = None) -> tuple[Tenant, str]:
        """Register ``name`` serving ``hosts``; returns it and its admin token (shown once, kept as a hash)."""
        return self.create_many([(name, list(hosts), settings or {})])[0]

    def create_many(self, wanted: list[tuple[str, list[str], dict[str, str]]]) -> list[tuple[Tenant, str]]:
        """Register each (name, hosts, settings) in one transaction: all of them, or none."""
        made: list[tuple[Tenant, str]] = []
        now = datetime.now(UTC)
        rows: list[TenantRow] = []
        host_rows: list[HostRow] = []
        for name, hosts, settings in wanted:
            check_name(name)
            if name in self.reserved:
                raise TenantExists(f"{name!r} is the installation's own tenant")
            normal = sorted({check_host(h) for h in hosts})
            token = secrets.token_urlsafe(24)
            values = check_settings(settings)
            rows.append(TenantRow(name=name, status="active", created_at=now, updated_at=now,
                                  settings=json.dumps(values), admin_token_hash=token_hash(token)))
            host_rows += [HostRow(host=h, tenant=name) for h in normal]
            made.append((Tenant(name, "active", tuple(normal), now, values, token_hash(token)), token))
        seen_hosts = [r.host for r in host_rows]
        if len(set(seen_hosts)) != len(seen_hosts):
            raise HostTaken("the same host is given to two tenants")
        try:
            with self._session() as session:
                taken = session.scalars(select(TenantRow.name).where(TenantRow.name.in_([r.name for r in rows])))
                if first := next(iter(taken), None):
                    raise TenantExists(f"tenant {first!r} exists")
                owned = session.execute(select(HostRow.host, HostRow.tenant).where(HostRow.host.in_(seen_hosts)))
                if clash := next(iter(owned), None):
                    raise HostTaken(f"host {clash.host} is {clash.tenant}'s")
                session.add_all(rows)
                session.flush()
                session.add_all(host_rows)
        except IntegrityError as exc:  # a concurrent create took the name or a host first
            raise TenantExists(f"a tenant or host is taken: {exc.orig}") from None
        return made

    def list(self) -> list[Tenant]:
        with self._session() as session:
            hosts: dict[str, list[str]] = {}
            for host, tenant in session.execute(select(HostRow.host, HostRow.tenant).order_by(HostRow.host)):
                hosts.setdefault(tenant, []).append(host)
            return [_tenant(row, hosts.get(row.name, [])) for row in
                    session.scalars(select(TenantRow).order_by(TenantRow.name))]

    def names(self) -> list[str]:
        with self._session() as session:
            return list(session.scalars(select(TenantRow.name).order_by(TenantRow.name)))

    def get(self, name: str) -> Tenant:
        with self._session() as session:
            row = session.get(TenantRow, name)
            if row is None:
                raise NoSuchTenant(f"no tenant {name!r}")
            hosts = session.scalars(select(HostRow.host).where(HostRow.tenant == name).order_by(HostRow.host))
            return _tenant(row, list(hosts))

    def set_status(self, name: str, status: Status) -> Tenant:
        with self._session() as session:
            changed = session.execute(update(TenantRow).where(TenantRow.name == name)
                                      .values(status=status, updated_at=datetime.now(UTC))).rowcount
        if not changed:
            raise NoSuchTenant(f"no tenant {name!r}")
        return self.get(name)

    def set_settings(self, name: str, pairs: dict[str, str]) -> Tenant:
        """Change some of ``name``'s settings (an empty value removes one)."""
        values = check_settings({k: v for k, v in pairs.items() if v})
        with self._session() as session:
            row = session.get(TenantRow, name)
            if row is None:
                raise NoSuchTenant(f"no tenant {name!r}")
            current = json.loads(row.settings) | values
            row.settings = json.dumps({k: v for k, v in current.items() if pairs.get(k, v)})
            row.updated_at = datetime.now(UTC)
        return self.get(name)

    def forget(self, name: str) -> None:
        """Remove ``name``, its hosts and its journal from the registry (its data is deleted before this)."""
        with self._session() as session:
            session.execute(delete(HostRow).where(HostRow.tenant == name))
            session.execute(delete(MigrationRow).where(MigrationRow.tenant == name))
            if not session.execute(delete(TenantRow).where(TenantRow.name == name)).rowcount:
                raise NoSuchTenant(f"no tenant {name!r}")

    # -- the journal of `cartwheel migrate --all-tenants` ------------------------------------

    def journal(self) -> dict[tuple[str, str], MigrationRow]:
        with self._session() as session:
            return {(r.tenant, r.service): r for r in session.scalars(select(MigrationRow))}

    def record(self, tenant: str, service: str, revision: str, error: str | None) -> None:
        """Note that ``tenant``'s ``service`` database reached ``revision`` (or failed to, with ``error``). Two runs
        at once (``cartwheel up`` and an operator's) may both write the row: the second one updates it."""
        try:
            self._record(tenant, service, revision, error)
        except IntegrityError:
            self._record(tenant, service, revision, error)

    def _record(self, tenant: str, service: str, revision: str, error: str | None) -> None:
        with self._session() as session:
            row = session.get(MigrationRow, (tenant, service))
            now = datetime.now(UTC)
            status = "failed" if error else "done"
            if row is None:
                session.add(MigrationRow(tenant=tenant, service=service, revision=revision, status=status,
                                         attempts=1, error=error, finished_at=now))
            else:
                row.revision, row.status, row.error, row.finished_at = revision, status, error, now
                row.attempts += 1

    def close(self) -> None:
        self.engine.dispose()


def _tenant(row: TenantRow, hosts: list[str]) -> Tenant:
    return Tenant(row.name, row.status, tuple(hosts), row.created_at, json.loads(row.settings),  # type: ignore[arg-type]
                  row.admin_token_hash)
