"""Issue 17: the tenant registry, `cartwheel tenants`, `cartwheel migrate --all-tenants` and the registry's
mirror in NATS, against real SQLite files, a real PostgreSQL server and a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psycopg
import pytest
from sqlalchemy.engine import make_url

from cartwheel import subjects
from cartwheel.bus import declare_topology
from cartwheel.db import head_revision, migrate
from cartwheel.settings import DATABASES, Settings
from cartwheel.tenants.mirror import Directory, sync
from cartwheel.tenants.registry import HostTaken, Registry, TenantExists

ROOT = Path(__file__).resolve().parents[2]


def cartwheel(var_dir: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cartwheel.cli", *argv], cwd=ROOT, env=_environ(var_dir, **env),
                          text=True, capture_output=True, timeout=300)


def _environ(var_dir: Path, **env: str) -> dict[str, str]:
    """This process's environment for a ``cartwheel`` command on ``var_dir``, with no NATS to reach."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CARTWHEEL_") and k != "PYTHONUNBUFFERED"}
    return environ | {"CARTWHEEL_VAR_DIR": str(var_dir), "CARTWHEEL_NATS_URL": "nats://127.0.0.1:1", **env}


def test_a_tenant_is_created_listed_disabled_and_deleted_with_every_byte(tmp_path: Path, nats_url: str) -> None:
    made = cartwheel(tmp_path, "tenants", "create", "acme", "--host", "Shop.Acme.test", "--set", "currency=usd")
    assert made.returncode == 0, made.stderr
    assert "tenant acme registered, serving shop.acme.test" in made.stdout
    assert f"{len(DATABASES)} tenant databases to migrate" in made.stdout and "0 failed" in made.stdout
    assert "the running shop was not told" in made.stdout  # no NATS here: said, not a failure
    folder = tmp_path / "tenants" / "acme"
    assert sorted(p.name for p in folder.glob("*.db")) == sorted(f"{s}.db" for s in DATABASES)
    with sqlite3.connect(folder / "orders.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision("orders"),)
    listed = cartwheel(tmp_path, "tenants", "list").stdout
    assert 'acme  active  shop.acme.test  {"currency": "USD"}' in listed
    assert cartwheel(tmp_path, "tenants", "create", "acme2", "--host", "shop.acme.test").returncode == 2
    assert "disabled" in cartwheel(tmp_path, "tenants", "disable", "acme").stdout
    assert "acme  disabled" in cartwheel(tmp_path, "tenants", "list").stdout
    refused = cartwheel(tmp_path, "tenants", "delete", "acme")
    assert refused.returncode == 2 and "--yes" in refused.stderr and folder.exists()
    no_nats = cartwheel(tmp_path, "tenants", "delete", "acme", "--yes")  # its messages can't be erased yet
    assert no_nats.returncode == 1 and "run the same command again" in no_nats.stderr
    assert "acme  deleting" in cartwheel(tmp_path, "tenants", "list").stdout  # kept until they are
    assert "being deleted" in cartwheel(tmp_path, "tenants", "enable", "acme").stderr
    marker = uuid.uuid4().hex
    events = [json.dumps({"tenant": tenant, "marker": marker, "n": n}).replace(" ", "")
              for n, tenant in enumerate(["acme", "other", "acme", "acme", "other"])]
    asyncio.run(publish_events(nats_url, tmp_path, events))
    mails = Settings(var_dir=tmp_path).database_url("notifications")  # the own shop's catcher: every shop's mails
    migrate("notifications", mails)
    with sqlite3.connect(make_url(mails).database) as db:
        for shop in ("acme", "other"):
            db.execute("INSERT INTO caught_mails (tenant, sender, recipients, subject, text, received_at) "
                       "VALUES (?, 's', '[]', 'hello', 't', '2026-12-07 00:00:00')", (shop,))
    deleted = cartwheel(tmp_path, "tenants", "delete", "acme", "--yes", CARTWHEEL_NATS_URL=nats_url)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not folder.exists()
    assert "0 tenants registered" in cartwheel(tmp_path, "tenants", "list").stdout
    left = asyncio.run(events_marked(nats_url, marker))
    assert [json.loads(e)["tenant"] for e in left] == ["other", "other"]
    with sqlite3.connect(make_url(mails).database) as db:
        assert db.execute("SELECT tenant FROM caught_mails").fetchall() == [("other",)]
    other = f"other/{marker}/e"
    assert asyncio.run(cached_and_stored(nats_url, marker)) == ([f"other.product.{marker}"], [other], [other])
    unknown = cartwheel(tmp_path, "tenants", "delete", "acme", "--yes")
    assert unknown.returncode == 2 and "no tenant 'acme'" in unknown.stderr


async def publish_events(nats_url: str, var_dir: Path, payloads: list[str]) -> None:
    """The tenants' events, and a cached product and an image of each (acme's and other's)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await declare_topology(js, Settings(var_dir=var_dir), update=False)
        for payload in payloads:
            await js.publish("events.orders.created", payload.encode())
        marker = json.loads(payloads[0])["marker"]
        cache = await js.key_value(subjects.CATALOG_CACHE_BUCKET)
        stores = [await js.object_store(bucket) for bucket in subjects.TENANT_OBJECT_BUCKETS]
        for tenant in ("acme", "other"):
            await cache.put(subjects.catalog_cache_key(tenant, marker), b"{}")
            for store in stores:  # an image, a digital product's file
                await store.put(subjects.product_image_object(tenant, marker, "e"), b"bytes")
    finally:
        await nc.close()


async def cached_and_stored(nats_url: str, marker: str) -> tuple[list[str], list[str], list[str]]:
    """Which of the two tenants' cache keys and images (publish_events') are still there. Each is asked for by
    name: listing a bucket's keys (nats-py's ``keys()``) now and then came back empty ("no keys found") with
    keys in it."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        cache = await js.key_value(subjects.CATALOG_CACHE_BUCKET)
        stores = [await js.object_store(bucket) for bucket in subjects.TENANT_OBJECT_BUCKETS]
        keys: list[str] = []
        objects: list[list[str]] = [[] for _ in stores]
        for tenant in ("acme", "other"):
            key = subjects.catalog_cache_key(tenant, marker)
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await cache.get(key)
                keys.append(key)
            name = subjects.product_image_object(tenant, marker, "e")
            for store, found in zip(stores, objects, strict=True):
                with contextlib.suppress(nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
                    if not (await store.get_info(name)).deleted:
                        found.append(name)
        images, files = objects
        return keys, images, files
    finally:
        await nc.close()


async def events_marked(nats_url: str, marker: str) -> list[str]:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await nats.connect(nats_url)
    found = []
    try:
        sub = await nc.jetstream().subscribe("events.orders.created", ordered_consumer=True,
                                             config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return found
            if marker in msg.data.decode(errors="replace"):
                found.append(msg.data.decode())
    finally:
        await nc.close()


def test_a_failing_tenant_is_named_never_blocks_the_others_and_the_rerun_resumes(tmp_path: Path) -> None:
    """The issue's fault: a failure injected into one tenant (here the 7th of 12: its orders database already has a
    table of that name, as a half-restored backup would) is reported by name, the rest are migrated, and the same
    command run again retries only what failed."""
    listing = tmp_path / "tenants.txt"
    listing.write_text("".join(f"t{i:04d} t{i:04d}.shops.test\n" for i in range(1, 13)))
    broken = tmp_path / "tenants" / "t0007"
    broken.mkdir(parents=True)
    with sqlite3.connect(broken / "orders.db") as db:
        db.execute("CREATE TABLE orders (id TEXT)")
    made = cartwheel(tmp_path, "tenants", "create", "--file", str(listing), "--parallel", "2")
    assert made.returncode == 1, made.stdout + made.stderr
    assert "12 tenants registered" in made.stdout
    each = len(DATABASES)  # databases a tenant has
    assert f"migrated {12 * each - 1} tenant databases" in made.stdout and "1 failed" in made.stdout
    assert "FAILED t0007 orders: OperationalError" in made.stdout and "already exists" in made.stdout
    assert f"migrating: {12 * each - 1} done, 1 failed, 0 remaining" in made.stderr  # the progress, as a log shows it
    assert (tmp_path / "tenants.tokens").stat().st_mode & 0o777 == 0o600
    dry = cartwheel(tmp_path, "migrate", "--all-tenants", "--dry-run")
    assert "would migrate t0007 orders" in dry.stdout and "would migrate t0008" not in dry.stdout
    assert "would migrate default" in dry.stdout  # the installation's own tenant: never migrated here yet
    with sqlite3.connect(broken / "orders.db") as db:
        db.execute("DROP TABLE orders")
    again = cartwheel(tmp_path, "migrate", "--all-tenants")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (f"{1 + each} tenant databases to migrate (2 tenants; 1 failed before), {12 * each - 1} already done"
            in again.stdout)  # t0007's orders, and every database of the installation's own tenant
    assert "0 failed" in again.stdout
    done = cartwheel(tmp_path, "migrate", "--all-tenants")
    assert "0 tenant databases to migrate" in done.stdout and f"{13 * each} already done" in done.stdout


def test_a_tenants_export_holds_its_databases_images_and_files_as_they_are(tmp_path: Path, nats_url: str) -> None:
    assert cartwheel(tmp_path, "tenants", "create", "acme", "--host", "acme.test").returncode == 0
    marker = uuid.uuid4().hex
    asyncio.run(publish_events(nats_url, tmp_path, [json.dumps({"tenant": "other", "marker": marker})]))
    with sqlite3.connect(tmp_path / "tenants" / "acme" / "gateway.db") as db:
        db.execute("INSERT INTO users (id, email, password_hash, created_at) VALUES ('u1', 'a@acme.test', 'x', "
                   "'2026-12-07 00:00:00')")
    out = tmp_path / "acme.tar.gz"
    offline = cartwheel(tmp_path, "tenants", "export", "acme", "--out", str(out))
    assert offline.returncode == 1 and "images are in NATS" in offline.stderr and not out.exists()
    done = cartwheel(tmp_path, "tenants", "export", "acme", "--out", str(out), CARTWHEEL_NATS_URL=nats_url)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    import hashlib
    import tarfile

    with tarfile.open(out) as tar:
        names = sorted(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        tar.extractall(tmp_path / "unpacked", filter="data")
    objects = [f"images/{marker}/e", f"files/{marker}/e"]
    assert names == sorted(["manifest.json", *objects, *(f"databases/{s}.db" for s in DATABASES)])
    for name in objects:
        assert (tmp_path / "unpacked" / name).read_bytes() == b"bytes"  # acme's, not other's
    assert manifest["files"][f"acme/{marker}/e"]["file"] == f"files/{marker}/e"
    assert manifest["tenant"]["name"] == "acme" and manifest["tenant"]["hosts"] == ["acme.test"]
    for service, entry in manifest["databases"].items():
        data = (tmp_path / "unpacked" / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and entry["revision"] == head_revision(service)
    with sqlite3.connect(tmp_path / "unpacked" / "databases" / "gateway.db") as db:
        assert db.execute("SELECT email FROM users").fetchall() == [("a@acme.test",)]
    missing = cartwheel(tmp_path, "tenants", "export", "nobody", CARTWHEEL_NATS_URL=nats_url)
    assert missing.returncode == 2 and "no tenant 'nobody'" in missing.stderr


def test_tenants_on_postgresql_have_databases_of_their_own_and_delete_drops_them(
    tmp_path: Path, postgres_admin_url: str, nats_url: str,
) -> None:
    prefix = f"cw{uuid.uuid4().hex[:8]}"
    template = make_url(postgres_admin_url).set(database=f"{prefix}_{{service}}__{{tenant}}")
    rendered = template.render_as_string(hide_password=False).replace("%7B", "{").replace("%7D", "}")
    env = {"CARTWHEEL_TENANT_DATABASE_URL": rendered, "CARTWHEEL_NATS_URL": nats_url}
    admin = make_url(postgres_admin_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def databases() -> list[str]:
        with psycopg.connect(admin) as conn:
            return sorted(r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                     (f"{prefix}%",)))
    try:
        for name in ("shop-a", "shop-b"):
            made = cartwheel(tmp_path, "tenants", "create", name, "--host", f"{name}.test", **env)
            assert made.returncode == 0, made.stdout + made.stderr
        assert databases() == sorted(f"{prefix}_{s}__{t}" for s in DATABASES for t in ("shop-a", "shop-b"))
        out = tmp_path / "shop-b.tar.gz"
        exported = cartwheel(tmp_path, "tenants", "export", "shop-b", "--out", str(out), **env)
        assert exported.returncode == 0, exported.stderr
        import tarfile

        with tarfile.open(out) as tar:
            dump = tar.extractfile("databases/orders.dump")
            assert dump is not None and dump.read(5) == b"PGDMP"  # pg_restore's custom format
        assert cartwheel(tmp_path, "tenants", "delete", "shop-a", "--yes", **env).returncode == 0
        assert databases() == sorted(f"{prefix}_{s}__shop-b" for s in DATABASES)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in databases():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_registry_on_either_database_keeps_names_and_hosts_unique(database_url: str) -> None:
    registry = Registry(database_url, reserved=["default"])
    try:
        tenant, token = registry.create("acme", ["shop.acme.test", "acme.test"], {"currency": "eur"})
        assert tenant.hosts == ("acme.test", "shop.acme.test") and tenant.settings == {"currency": "EUR"}
        assert len(token) >= 32 and token not in str(registry.get("acme"))
        with pytest.raises(TenantExists):
            registry.create("acme", ["other.test"])
        with pytest.raises(TenantExists, match="installation's own"):
            registry.create("default", ["other.test"])
        with pytest.raises(HostTaken, match="acme's"):
            registry.create("other", ["acme.test"])
        with pytest.raises(TenantExists):  # all or nothing: the first is not kept when the second is refused
            registry.create_many([("new-one", ["new.test"], {}), ("acme", ["x.test"], {})])
        assert registry.names() == ["acme"]
        registry.record("acme", "orders", "0007", "OperationalError: boom")
        registry.record("acme", "orders", "0007", None)
        row = registry.journal()[("acme", "orders")]
        assert (row.status, row.attempts, row.error) == ("done", 2, None)
        registry.forget("acme")
        assert registry.list() == [] and registry.journal() == {}
    finally:
        registry.close()


def test_the_mirror_tells_the_gateway_which_tenant_a_host_is(nats_url: str, tmp_path: Path) -> None:
    settings = Settings(nats_url=nats_url, var_dir=tmp_path, default_tenant_hosts="main.test")
    registry = Registry(settings.control_url, reserved=[settings.tenant])

    async def scenario() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        directory = Directory(settings, lambda: nc)
        try:
            await declare_topology(nc.jetstream(), settings, update=False)
            registry.create("acme", ["shop.acme.test"])
            registry.create("gone", ["gone.test"])
            await sync(settings, registry)
            directory.mirror.start()
            assert await directory.mirror.wait_synced(5)
            seen = {host: directory.tenant_of(host) for host in
                    ("SHOP.acme.test:8080", "gone.test", "main.test", "elsewhere.test")}
            registry.set_status("acme", "disabled")
            registry.forget("gone")
            await sync(settings, registry)
            await directory.mirror.current(nc, 5)
            seen |= {f"after {host}": directory.tenant_of(host) for host in ("shop.acme.test", "gone.test")}
            return seen
        finally:
            await directory.mirror.stop()
            await nc.close()

    try:
        seen = asyncio.run(scenario())
    finally:
        registry.close()
    assert seen == {"SHOP.acme.test:8080": "acme", "gone.test": "gone", "main.test": "default",
                    "elsewhere.test": None, "after shop.acme.test": None, "after gone.test": None}


def test_cartwheel_up_migrates_the_registered_tenants_and_publishes_the_registry(tmp_path: Path) -> None:
    """A tenant registered while the shop was down (or a new version with a migration) is brought to the head when
    the shop starts, and the gateway and services learn of it from the bucket."""
    import io

    from cartwheel.natsserver import free_port
    from cartwheel.supervisor import System
    from cartwheel.tenants import mirror

    settings = Settings(var_dir=tmp_path, nats_url=f"nats://127.0.0.1:{free_port()}", gateway_host="127.0.0.1",
                        gateway_port=free_port(), metrics_port=0)
    registry = Registry(settings.control_url, reserved=[settings.tenant])
    registry.create("acme", ["shop.acme.test"])
    registry.close()
    out = io.StringIO()
    shop = System(settings, out=out, colour=False, seed=False)
    shop.start()
    try:
        said = out.getvalue()
        assert f"migrating {len(DATABASES)} databases of 1 tenants" in said and "1 tenants registered" in said
        with sqlite3.connect(tmp_path / "tenants" / "acme" / "orders.db") as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision("orders"),)

        async def published() -> list[str]:
            from cartwheel import natsauth

            nc = await nats.connect(settings.nats_servers, **natsauth.connect_options(settings, natsauth.ADMIN))
            try:
                kv = await nc.jetstream().key_value(subjects.TENANTS_BUCKET)
                return list(await kv.keys())
            finally:
                await nc.close()

        assert asyncio.run(published()) == [f"{mirror.PREFIX}acme"]
    finally:
        shop.stop()


def test_a_tenants_dead_letters_are_read_from_its_own_database_and_no_file_is_made_for_a_stranger(
    tmp_path: Path,
) -> None:
    assert cartwheel(tmp_path, "tenants", "create", "acme", "--host", "acme.test").returncode == 0
    listed = cartwheel(tmp_path, "dead-letters", "inventory", "--tenant", "acme")
    assert listed.returncode == 0 and "0 dead letter(s) in inventory" in listed.stdout
    for stranger in ("nobody", "../../etc"):
        refused = cartwheel(tmp_path, "dead-letters", "inventory", "--tenant", stranger)
        assert refused.returncode == 2 and "no tenant" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "tenants").iterdir()) == ["acme"]


def _dies_for_t0003(job: Any) -> str | None:
    """A migration whose process dies (a crash, the OOM killer) for one tenant."""
    from cartwheel.tenants.migrate import migrate_one

    if job.tenant == "t0003":
        os._exit(9)
    return migrate_one(job)


def test_a_migration_process_that_dies_fails_its_tenant_and_the_others_are_migrated(tmp_path: Path) -> None:
    """Review of issue 17: a worker killed mid-migration broke the whole pool and every remaining tenant failed."""
    from cartwheel.tenants import migrate

    settings = Settings(var_dir=tmp_path)
    registry = Registry(settings.control_url, reserved=[settings.tenant])
    try:
        registry.create_many([(f"t{i:04d}", [f"t{i:04d}.test"], {}) for i in range(1, 6)])
        plan = migrate.plan(settings, registry, tenants=registry.names(), services=["catalog", "cart"])
        with open(os.devnull, "w") as quiet:
            outcome = migrate.run(registry, plan.todo, parallel=2, work=_dies_for_t0003, out=quiet)
        assert outcome.failed_tenants == ["t0003"] and outcome.migrated == 8
        assert all("process died" in error for error in outcome.failures.values())
        (tmp_path / "tenants" / "t0001" / "cart.db").unlink()  # deleted behind the journal's back
        again = migrate.plan(settings, registry, tenants=registry.names(), services=["catalog", "cart"])
        assert sorted((job.tenant, job.service) for job in again.todo) == [
            ("t0001", "cart"), ("t0003", "cart"), ("t0003", "catalog")]
    finally:
        registry.close()


def _tells_whether_it_takes_ctrl_c(job: Any) -> str | None:
    """For t0002, kill the pool's forkserver (the next pool starts another) and die; for the others, fail when
    this process would take a Ctrl-C: it must be born with SIGINT blocked, then ignore it."""
    if job.tenant == "t0002":
        os.kill(os.getppid(), signal.SIGKILL)  # a worker's parent is the forkserver that forked it
        os._exit(9)
    time.sleep(0.2)  # in flight when the pool breaks: run again in the next pools, from the next forkserver
    status = Path("/proc/self/status").read_text()
    blocked, ignored = (int(status.split(f"{name}:")[1].split()[0], 16) for name in ("SigBlk", "SigIgn"))
    sigint = 1 << (signal.SIGINT - 1)
    if blocked & sigint and ignored & sigint:
        return None
    return f"takes Ctrl-C: SigBlk {blocked:x}, SigIgn {ignored:x}"


def test_a_migration_process_never_takes_ctrl_c_even_from_a_forkserver_started_again(tmp_path: Path) -> None:
    """Review: the forkserver was started with SIGINT held back once per run; when it died, the next pool started
    another with the usual mask, whose workers a Ctrl-C killed mid-migration."""
    from cartwheel.tenants import migrate

    settings = Settings(var_dir=tmp_path)
    registry = Registry(settings.control_url, reserved=[settings.tenant])
    try:
        registry.create_many([(f"t{i:04d}", [f"t{i:04d}.test"], {}) for i in range(1, 7)])
        plan = migrate.plan(settings, registry, tenants=registry.names(), services=["catalog"])
        with open(os.devnull, "w") as quiet:
            outcome = migrate.run(registry, plan.todo, parallel=2, work=_tells_whether_it_takes_ctrl_c, out=quiet)
        assert list(outcome.failures) == [("t0002", "catalog")], outcome.failures
        assert outcome.migrated == 5
    finally:
        registry.close()


def test_ctrl_c_stops_a_migration_of_every_tenant_without_a_traceback_and_the_rerun_goes_on(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) during ``cartwheel tenants create``'s
    migrations printed a KeyboardInterrupt traceback from the parent, and each worker process printed its own. Now the
    migrations under way end, the summary says how many are left, the exit status is 130, no worker is left behind,
    and ``cartwheel migrate --all-tenants`` goes on from the journal (every one that ended is in it: none failed)."""
    each = len(DATABASES)
    with _migrating(tmp_path, 200) as creating:
        deadline = time.monotonic() + 60
        while _journal_done(tmp_path) < 4:  # some migrated, most not yet (200 tenants: about 15 s here)
            assert time.monotonic() < deadline and creating.poll() is None, "no migration ended within 60 s"
            time.sleep(0.05)
        workers = _children(creating.pid)
        assert len(workers) >= 3, workers  # the forkserver and two workers at least
        out, err = _ctrl_c(creating)
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err
    lines = out.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("migrated "))
    migrated = int(lines[summary].split()[1])
    assert 0 < migrated < 200 * each and lines[summary].endswith("; 0 failed"), out  # none cut off as failed
    assert lines[summary + 1].startswith(f"interrupted: {200 * each - migrated} not migrated;"), out
    deadline = time.monotonic() + 5  # the forkserver and the resource tracker end when they see their parent gone
    while (left := [pid for pid in workers if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:120] for pid in left]
    again = cartwheel(tmp_path, "migrate", "--all-tenants")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f", {migrated} already done" in again.stdout  # the journal kept each one that ended
    assert f"migrated {200 * each - migrated + each} tenant databases" in again.stdout  # the rest, and the own's


@pytest.mark.parametrize("after_s", [0.0, 0.04, 0.05, 0.06, 0.3])
def test_ctrl_c_while_the_migration_processes_start_fails_no_tenant(tmp_path: Path, after_s: float) -> None:
    """Review: a worker process only ignored Ctrl-C once its imports were done; one interrupted before died, broke
    the pool, and every job in flight was journalled as failed (``BrokenProcessPool``). And at 0.04-0.06 s, while
    the command starts its pool's forkserver: SIGINT was ignored there for the moment, and a Ctrl-C then was lost
    (every tenant migrated, exit 0)."""
    with _migrating(tmp_path, 40) as creating:
        time.sleep(after_s)  # the pool's processes are starting: importing what a migration needs takes about 1 s
        out, err = _ctrl_c(creating)
    assert "Traceback" not in out + err and "FAILED" not in out and "BrokenProcessPool" not in out + err, out + err
    with contextlib.closing(sqlite3.connect(tmp_path / "control.db")) as db:
        assert db.execute("SELECT count(*) FROM tenant_migrations WHERE status = 'failed'").fetchone() == (0,)


CTRL_C_WHILE_THE_FORKSERVER_STARTS = """
import multiprocessing.forkserver, os, signal, sys, time
from cartwheel import interrupts
starting = multiprocessing.forkserver.ensure_running
def ctrl_c_meanwhile():
    os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C while the forkserver starts
    starting()
multiprocessing.forkserver.ensure_running = ctrl_c_meanwhile
with interrupts.StopAsked() as stop:
    getattr(interrupts, sys.argv[1])()
    deadline = time.monotonic() + 5
    while not stop.asked and time.monotonic() < deadline:
        time.sleep(0.01)
print("asked" if stop.asked else "lost")
"""


def test_a_ctrl_c_while_the_forkserver_starts_reaches_the_command() -> None:
    """The window the timed Ctrl-C tests above aim at, hit every time: the command ignored SIGINT while it started
    the forkserver, and the resource tracker's start unblocked it meanwhile, so a Ctrl-C then was dropped."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_THE_FORKSERVER_STARTS,
                           "start_forkserver_with_sigint_blocked"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "asked"), done.stdout + done.stderr


@contextlib.contextmanager
def _migrating(var_dir: Path, tenants: int) -> Iterator[subprocess.Popen[str]]:
    """``cartwheel tenants create --file`` for ``tenants`` tenants in a process group of its own (as a shell runs a
    job, Ctrl-C reaching it whole), once it has printed its plan: its migrations start now."""
    listing = var_dir / "tenants.txt"
    listing.write_text("".join(f"t{i:04d} t{i:04d}.shops.test\n" for i in range(1, tenants + 1)))
    creating = subprocess.Popen([sys.executable, "-m", "cartwheel.cli", "tenants", "create", "--file", str(listing),
                                 "--parallel", "2"], cwd=ROOT, env=_environ(var_dir), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert creating.stdout is not None
        while "tenant databases to migrate" not in (line := creating.stdout.readline()):  # flushed, through a pipe
            assert line, f"ended before migrating: {creating.communicate()}"
        yield creating
    finally:
        if creating.poll() is None:
            os.killpg(creating.pid, signal.SIGKILL)


def _ctrl_c(creating: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT to the command's process group, as a terminal sends Ctrl-C; its output once it ended with 130."""
    os.killpg(creating.pid, signal.SIGINT)
    out, err = creating.communicate(timeout=60)
    assert creating.returncode == 130, out + err
    return out, err


def _journal_done(var_dir: Path) -> int:
    """Databases the migration journal says are done (0 before the control database has its table)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{var_dir / 'control.db'}?mode=ro", uri=True)) as db:
            return db.execute("SELECT count(*) FROM tenant_migrations WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (the pool's forkserver, its workers, the resource tracker), from /proc."""
    found = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
             and _parent_of(int(p.name)) == pid]
    return found + [grandchild for child in found for grandchild in _children(child)]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
