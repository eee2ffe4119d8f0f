"""A service's databases, one per tenant, in a bounded set: real SQLite files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from cartwheel.db import migrate
from cartwheel.settings import Settings
from cartwheel.tenants import context, databases
from cartwheel.tenants.databases import TenantDatabases, UnknownTenant


def make_tenants(settings: Settings, names: list[str]) -> None:
    for name in names:
        migrate("catalog", settings.database_url("catalog", name))


def test_at_most_n_tenant_databases_are_open_and_each_tenant_reads_its_own(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(databases, "CLOSE_AFTER_S", 0.0)
    settings = Settings(var_dir=tmp_path, tenant_databases_open=3)
    migrate("catalog", settings.database_url("catalog"))
    names = [f"shop-{i}" for i in range(8)]
    make_tenants(settings, names)
    dbs = TenantDatabases("catalog", settings)
    try:
        for name in names:
            dbs.of(name).run_sync(lambda s, n=name: s.execute(text(
                "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES (:n, :n, '2026-01-01')"),
                {"n": n}))
            assert len(dbs.all_open()) <= 1 + 3  # the own one and three others
        for name in names:
            with context.serving(name):  # service.db.<...>: the current tenant's
                seen = dbs.read_sync(lambda s: s.execute(text("SELECT event_id FROM processed_events")).scalars().all())
                assert seen == [name]
        assert dbs.own.read_sync(lambda s: s.execute(text("SELECT count(*) FROM processed_events")).scalar()) == 0
        assert dbs.opened >= len(names)
    finally:
        dbs.close()


def test_an_unknown_tenant_is_refused_and_gets_no_file(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    dbs = TenantDatabases("catalog", settings)
    try:
        for name in ("nobody", "../../etc", "Shop"):
            with pytest.raises(UnknownTenant) as refused:
                dbs.of(name)
            assert refused.value.code == "unknown_tenant"
        assert not (tmp_path / "tenants").exists()
    finally:
        dbs.close()


def test_upkeep_never_pushes_a_busy_tenants_database_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(databases, "UPKEEP_CLOSE_AFTER_S", 0.2)
    settings = Settings(var_dir=tmp_path, tenant_databases_open=2)
    make_tenants(settings, ["busy", "quiet-1", "quiet-2", "quiet-3"])
    dbs = TenantDatabases("catalog", settings)
    try:
        busy = dbs.of("busy")
        for _ in range(2):  # a second round of upkeep too: the quiet ones stay upkeep's
            for quiet in ("quiet-1", "quiet-2", "quiet-3"):
                with context.serving(quiet, background=True):
                    dbs.current()
        assert [name for name, _ in dbs.all_open()][1:] == ["busy", "quiet-3"]  # quiet ones went first
        assert dbs.busy("busy") and not dbs.busy("quiet-3")
        assert dbs.of("busy") is busy  # never closed and opened again
        time.sleep(0.3)
        with context.serving("quiet-1", background=True):
            dbs.current()  # opening one closes upkeep's idle ones, below the capacity too
        assert [name for name, _ in dbs.all_open()][1:] == ["busy", "quiet-1"]
    finally:
        dbs.close()


def test_a_tenant_whose_migration_failed_is_refused_not_half_served(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    url = settings.database_url("catalog", "half")
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    migrate("catalog", url, "0001")  # stopped part-way, as a failed `migrate --all-tenants` leaves it
    dbs = TenantDatabases("catalog", settings)
    try:
        with pytest.raises(UnknownTenant, match="not migrated to this version"):
            dbs.of("half")
    finally:
        dbs.close()


def test_a_quiet_tenants_outbox_is_published_after_a_restart_without_any_traffic(
    nats_url: str, tmp_path: Path, start_service: object,
) -> None:
    """Events a tenant recorded just before a crash are not left behind when nobody asks for that tenant again:
    the service's outbox upkeep visits every registered tenant after it starts."""
    import asyncio
    import uuid
    from datetime import UTC, datetime

    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from cartwheel.bus import declare_topology
    from cartwheel.tenants.mirror import sync
    from cartwheel.tenants.registry import Registry
    from tests.integration.conftest import settings_for

    settings = settings_for(nats_url, tmp_path)
    registry = Registry(settings.control_url, reserved=[settings.tenant])
    registry.create("quiet-shop", ["quiet.test"])
    migrate("catalog", settings.database_url("catalog"))
    migrate("catalog", settings.database_url("catalog", "quiet-shop"))
    event_id = f"left-{uuid.uuid4().hex}"
    subject = f"events.catalog.upkeep_test_{uuid.uuid4().hex[:8]}"
    dbs = TenantDatabases("catalog", settings)
    dbs.of("quiet-shop").run_sync(lambda s: s.execute(text(
        "INSERT INTO outbox (event_id, subject, payload, created_at, attempts) VALUES (:id, :subject, '{}', :at, 0)"),
        {"id": event_id, "subject": subject, "at": datetime.now(UTC).replace(tzinfo=None)}))
    dbs.close()

    async def registered() -> None:
        nc = await nats.connect(nats_url)
        try:
            await declare_topology(nc.jetstream(), settings, update=False)
            await sync(settings, registry)
        finally:
            await nc.close()

    asyncio.run(registered())
    registry.close()
    start_service("catalog", var_dir=tmp_path)  # type: ignore[operator]

    async def published() -> str:
        nc = await nats.connect(nats_url)
        try:
            sub = await nc.jetstream().subscribe(subject, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            msg = await sub.next_msg(timeout=20)
            return msg.headers.get("Nats-Msg-Id", "") if msg.headers else ""
        finally:
            await nc.close()

    assert asyncio.run(published()) == event_id
