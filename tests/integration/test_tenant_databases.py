"""A service's databases, one per tenant, in a bounded set: real SQLite files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

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


def test_on_closed_is_told_after_an_evicted_database_closed_not_when_it_is_evicted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heap settler reclaims what a closed database left frozen (cartwheel.heap): told at the eviction, it would
    freeze the engine again before it is closed, CLOSE_AFTER_S later."""
    monkeypatch.setattr(databases, "CLOSE_AFTER_S", 0.3)
    settings = Settings(var_dir=tmp_path, tenant_databases_open=1)
    migrate("catalog", settings.database_url("catalog"))
    make_tenants(settings, ["shop-a", "shop-b", "shop-c"])
    evicted: list[str] = []
    closed: list[bool] = []
    dbs = TenantDatabases("catalog", settings, on_close=lambda tenant, db: evicted.append(tenant),
                          on_closed=lambda: closed.append(all(d.engine.pool.checkedin() == 0 for d in first)))
    try:
        first = [dbs.of("shop-a")]
        first[0].read_sync(lambda s: s.execute(text("SELECT 1")))  # a connection in its pool until it closes
        assert first[0].engine.pool.checkedin() == 1
        dbs.of("shop-b")  # evicts shop-a: closed 0.3 s later
        assert evicted == ["shop-a"] and closed == []
        time.sleep(0.4)
        dbs.of("shop-c")  # the next use reaps what is due
        assert evicted == ["shop-a", "shop-b"] and closed == [True]
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

    from tests.integration.conftest import register_tenants, settings_for

    settings = settings_for(nats_url, tmp_path)
    register_tenants(nats_url, settings, ("quiet-shop", ["quiet.test"], {}))
    migrate("catalog", settings.database_url("catalog"))
    migrate("catalog", settings.database_url("catalog", "quiet-shop"))
    event_id = f"left-{uuid.uuid4().hex}"
    subject = f"events.catalog.upkeep_test_{uuid.uuid4().hex[:8]}"
    dbs = TenantDatabases("catalog", settings)
    dbs.of("quiet-shop").run_sync(lambda s: s.execute(text(
        "INSERT INTO outbox (event_id, subject, payload, created_at, attempts) VALUES (:id, :subject, '{}', :at, 0)"),
        {"id": event_id, "subject": subject, "at": datetime.now(UTC).replace(tzinfo=None)}))
    dbs.close()

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


def test_a_quiet_tenants_outbox_is_looked_at_without_opening_its_database(tmp_path: Path) -> None:
    """With 1,000 tenants registered, each service's upkeep opened a quiet tenant's database (engine, relay and all)
    4 times a second to find its outbox empty. Closed, its SQLite file is read on a connection of its own, and the
    database opens only when something waits."""
    import asyncio
    from datetime import UTC, datetime

    from cartwheel.outbox import has_unpublished
    from cartwheel.statements import read_file

    settings = Settings(var_dir=tmp_path)
    path = Path(make_url(settings.database_url("catalog", "calm")).database or "")
    with pytest.raises(UnknownTenant):
        TenantDatabases("catalog", settings).closed_file("calm")  # no database made: no tenant
    migrate("catalog", settings.database_url("catalog", "calm"))
    dbs = TenantDatabases("catalog", settings)
    try:
        assert dbs.closed_file(dbs.own_name) is None and dbs.closed_file("calm") == path
        assert asyncio.run(dbs.read_closed("calm", has_unpublished)) is False  # read, and left closed
        assert dbs.closed_file("calm") == path
        assert asyncio.run(dbs.read_closed("calm", lambda s: s.execute("SELECT nothing FROM outbox", ()))) is None
        calm = dbs.of("calm")
        assert dbs.closed_file("calm") is None  # open here: its relay looks
        assert asyncio.run(dbs.read_closed("calm", has_unpublished)) is None
        calm.run_sync(lambda s: s.execute(text(
            "INSERT INTO outbox (event_id, subject, payload, created_at, attempts) VALUES ('e', 's', '{}', :at, 0)"),
            {"at": datetime.now(UTC).replace(tzinfo=None)}))
        assert read_file(path, has_unpublished)  # beside the open database, as another process would see it
        calm.run_sync(lambda s: s.execute(text("UPDATE outbox SET published_at = created_at")))
        assert not read_file(path, has_unpublished)
        with pytest.raises(DBAPIError, match="readonly"):  # a look only: it writes nothing
            read_file(path, lambda statements: statements.execute("DELETE FROM outbox", ()))
        gone = path.with_name("gone.db")
        with pytest.raises(DBAPIError):  # a file deleted meanwhile is not made again
            read_file(gone, has_unpublished)
        assert not gone.exists()
    finally:
        dbs.close()


def test_a_tenant_deleted_while_a_service_runs_is_let_go_and_refused_and_nothing_comes_back(
    nats_url: str, tmp_path: Path, start_service: object,
) -> None:
    """Review of issue 17: deleting a tenant unlinked its files under a running service, which kept the database
    open, kept writing (its relay, its caches) and handled its events forever after."""
    import asyncio
    import os
    import subprocess
    import sys

    import nats

    from cartwheel.bus import request
    from cartwheel.contracts.catalog import CreateProduct, ProductDraft
    from cartwheel.errors import DomainError
    from tests.helpers import random_sku
    from tests.integration.conftest import register_tenants, settings_for

    settings = settings_for(nats_url, tmp_path)
    register_tenants(nats_url, settings, ("short-lived", ["short.test"], {}))
    for service in ("catalog", "gateway", "cart", "inventory", "orders", "payments"):
        migrate(service, settings.database_url(service, "short-lived"))
    migrate("catalog", settings.database_url("catalog"))

    catalog = start_service("catalog", var_dir=tmp_path)  # type: ignore[operator]

    def create() -> dict:
        async def ask() -> dict:
            nc = await nats.connect(nats_url)
            try:
                draft = ProductDraft(sku=random_sku(), name="Tea", price_cents=500, currency="EUR")
                return await request(nc, CreateProduct(tenant="short-lived", draft=draft), 5)
            finally:
                await nc.close()
        return asyncio.run(ask())

    assert create()["id"]
    assert "short-lived" in [name for name, _ in catalog.service.db.all_open()]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CARTWHEEL_")}
    environ |= {"CARTWHEEL_VAR_DIR": str(tmp_path), "CARTWHEEL_NATS_URL": nats_url}
    done = subprocess.run([sys.executable, "-m", "cartwheel.cli", "tenants", "delete", "short-lived", "--yes"],
                          env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "short-lived" not in [name for name, _ in catalog.service.db.all_open()]
    with pytest.raises(DomainError) as refused:
        create()
    assert refused.value.code == "unknown_tenant"
    time.sleep(1.5)  # a relay or a cache write of the deleted tenant would have made its folder again by now
    assert not (tmp_path / "tenants" / "short-lived").exists()
