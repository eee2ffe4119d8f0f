"""What an operator sees in an incident: readiness that tells the truth, the metrics that say where, quiet logs.

Each test makes the trouble for real (a SQLite file write-locked by another connection, a nats-server
SIGSTOPped and then killed and started again, an event that cannot be published, a handler that fails) and
checks that readiness, the metrics and the log say so, and say so again once it is over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig

from cartwheel import subjects
from cartwheel.contracts.catalog import Product, ProductCreated
from cartwheel.contracts.inventory import SetStock
from cartwheel.lanes.client import LaneClient
from cartwheel.natsserver import NatsServer, free_port
from cartwheel.outbox import OutboxEvent
from cartwheel.service import Service
from tests.helpers import random_sku
from tests.integration.conftest import Client, ServiceThread, settings_for

LANE = subjects.INVENTORY_LANE


def on_loop(runner: ServiceThread, work: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    return asyncio.run_coroutine_threadsafe(work, runner._loop).result(timeout)


def sample(service: Service, name: str, **labels: str) -> float:
    return service.registry.get_sample_value(name, {"service": service.name, **labels}) or 0.0


def wait_until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)
    return found


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, to stop, kill and start again."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.start()
    yield server
    server.stop()


def test_a_write_locked_database_makes_the_service_not_ready_and_the_lane_shows_its_lag(
    tmp_path: Path, own_nats: NatsServer
) -> None:
    """Seen: with inventory.db write-locked, restocks failed with 503 after 5 s while every health endpoint said
    ok (its check was ``SELECT 1``). Now the write probe fails, readiness says why, and the lane's lag and the
    age of its oldest command grow until the lock goes; then it is ready again and the lag is 0.

    On a nats-server of its own: on the session's, this inventory consumed every earlier test's catalog events and
    sent their stock into the same lane, and two full runs saw one of those commands in the lag at the end."""
    import importlib

    path = tmp_path / "locked-inventory.db"
    settings = settings_for(own_nats.url, tmp_path, inventory_database_url=f"sqlite:///{path}",
                            metrics_port=free_port())
    runner = ServiceThread(importlib.import_module("services.inventory.app").build(settings)).start()
    client = Client(own_nats.url)
    try:
        check_a_write_locked_database(runner, client, path)
    finally:
        client.close()
        runner.stop()


def check_a_write_locked_database(runner: ServiceThread, client: Client, path: Path) -> None:
    service = runner.service
    assert on_loop(runner, service.readiness.check()) == []
    assert sample(service, "cartwheel_ready") == 1 and sample(service, "cartwheel_nats_connected") == 1
    port = service.settings.metrics_port
    assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200

    async def restock(nc: nats.NATS) -> list[Any]:
        lane = await LaneClient(nc, LANE).start()
        await lane.call("warm", "set_stock", SetStock(product_id="warm", on_hand=1).model_dump(mode="json"),
                        timeout=20)  # the partitions are taken before the lock
        locker = sqlite3.connect(path, timeout=10, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process's writer, as an admin's sqlite3 shell would be
        try:
            calls = [asyncio.create_task(lane.call(f"p{i}", "set_stock",
                                                   SetStock(product_id=f"p{i}", on_hand=i).model_dump(mode="json"),
                                                   timeout=60)) for i in range(20)]
            await asyncio.sleep(2.5)
            checked = asyncio.run_coroutine_threadsafe(service.readiness.check(), runner._loop)
            problems = await asyncio.wrap_future(checked)
            lag = sample(service, "cartwheel_lane_lag_commands", lane=LANE)
            oldest = sample(service, "cartwheel_lane_oldest_unapplied_seconds", lane=LANE)
            status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/readyz")
            # The service still answers: its lane waits for the lock on a thread, not on the event loop (which
            # stood still for up to 30 s: no health answers, no requests of any kind).
            answer = json.loads((await nc.request(subjects.health("inventory"), b"", timeout=2)).data)
            assert answer["status"] == "degraded" and not answer["database"], answer
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await asyncio.gather(*calls)
        return [problems, lag, oldest, status, body]

    problems, lag, oldest, status, body = client.run(restock)
    assert any(p.startswith("database:") for p in problems), problems
    assert status == 503 and "database" in json.loads(body)["problems"][0]
    assert lag >= 20 and oldest >= 2.0, (lag, oldest)  # every command waits, the oldest since the lock
    # The lane's transaction waits for the lock on the writing thread's own connection, outside the pool (whose room
    # stays the readers'): the lag above is what shows it.
    assert sample(service, "cartwheel_ready") == 0
    assert on_loop(runner, service.readiness.check()) == []  # the lock is gone: ready again
    # Every call is answered; the batch that answered the last ones ends a moment later.
    deadline = time.monotonic() + 5
    while sample(service, "cartwheel_lane_lag_commands", lane=LANE) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sample(service, "cartwheel_lane_lag_commands", lane=LANE) == 0
    assert sample(service, "cartwheel_lane_oldest_unapplied_seconds", lane=LANE) == 0
    assert sample(service, "cartwheel_ready") == 1
    assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def test_a_lost_nats_server_shows_in_readiness_lease_renewal_and_connection_metrics_and_logs_quietly(
    own_nats: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: after a nats-server restart, the lanes' ownership round failed (a traceback 4 times a second)
    while partitions_owned said 16 and every health check said ok: failover was dead and nothing showed it.
    Now: with the server stopped, leases are not renewed and the service is not ready, saying why; the
    failures are counted and logged as one line, not one per try; killed and started again, the connection
    is counted as lost and back, and the service is ready again."""
    settings = settings_for(own_nats.url, tmp_path, inventory_database_url=f"sqlite:///{tmp_path / 'inv.db'}")
    import importlib

    runner = ServiceThread(importlib.import_module("services.inventory.app").build(settings)).start()
    service = runner.service
    try:
        wait_until(lambda: sample(service, "cartwheel_lane_partitions_owned", lane=LANE) == 16, "partitions taken")
        assert on_loop(runner, service.readiness.check()) == []
        caplog.clear()
        with caplog.at_level(logging.INFO):
            os.kill(own_nats.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                problems = wait_until(lambda: [p for p in on_loop(runner, service.readiness.check(), 30)
                                               if "heartbeat or ownership round" in p], "leases seen stale", 20)
                assert sample(service, "cartwheel_lane_lease_renewal_age_seconds", lane=LANE) > 3
                wait_until(lambda: sample(service, "cartwheel_lane_lease_renewal_failures_total", lane=LANE) >= 1,
                           "a failed heartbeat counted")  # a publish times out after a while: then it counts
                assert sample(service, "cartwheel_ready") == 0
                time.sleep(4)  # more failed tries: counted, not each logged
            finally:
                os.kill(own_nats.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            wait_until(lambda: on_loop(runner, service.readiness.check(), 30) == [], "ready again after SIGCONT", 20)
        assert problems
        failing = [r for r in caplog.records if "failed" in r.getMessage() and r.name.startswith("cartwheel")]
        assert len(failing) <= 6, [r.getMessage() for r in failing]  # one line per thing that failed, no flood
        assert all(r.exc_info is None for r in failing if "heartbeat" in r.getMessage())

        own_nats.stop()  # killed, and started again on its port with its files
        wait_until(lambda: (on_loop(runner, service.readiness.check(), 30), sample(service, "cartwheel_nats_connected")
                            == 0)[1], "the lost connection seen", 20)
        assert "not connected to NATS" in service.readiness.now()
        own_nats.start()
        wait_until(lambda: on_loop(runner, service.readiness.check(), 30) == [], "ready after the restart", 30)
        assert sample(service, "cartwheel_nats_connected") == 1
        assert sample(service, "cartwheel_nats_reconnects_total") == 1
    finally:
        runner.stop()


def test_events_that_cannot_be_published_age_in_the_outbox_and_make_the_service_not_ready(
    nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox's backlog, its oldest event's age and the failed publishes; past OUTBOX_STALE_S, not ready,
    said once in the log however often the check finds it (with a new age each time), and once when over."""
    runner = ServiceThread(Service("orders", settings_for(nats_url, tmp_path))).start()
    service = runner.service
    service.readiness.outbox_stale_s = 1.0
    try:
        stuck = OutboxEvent(event_id=uuid.uuid4().hex, subject=f"nowhere.{random_sku()}", payload="{}", attempts=0)
        service.db.run_sync(lambda s: s.add(stuck))  # no stream takes this subject: every publish fails
        service.notify_outbox()
        wait_until(lambda: sample(service, "cartwheel_outbox_publish_failures_total") >= 1, "a failed publish")
        time.sleep(1.2)
        with caplog.at_level(logging.INFO, logger="cartwheel.readiness"):
            for _ in range(3):
                problems = on_loop(runner, service.readiness.check())
                time.sleep(1.1)
        assert any(p.startswith("outbox: 1 events wait") for p in problems), problems
        said = [r.getMessage() for r in caplog.records if r.name == "cartwheel.readiness"]
        assert len(said) == 1 and said[0].startswith("orders is not ready: outbox: 1 events wait"), said
        assert sample(service, "cartwheel_outbox_pending") == 1
        assert sample(service, "cartwheel_outbox_oldest_age_seconds") > 1.0
        service.db.run_sync(lambda s: s.query(OutboxEvent).filter_by(event_id=stuck.event_id).delete())
        assert on_loop(runner, service.readiness.check()) == []
        assert sample(service, "cartwheel_outbox_pending") == 0
        assert sample(service, "cartwheel_outbox_oldest_age_seconds") == 0
    finally:
        runner.stop()


def test_event_consumers_report_their_backlog_and_redeliveries(nats_url: str, tmp_path: Path, client: Client) -> None:
    durable = f"slow_{random_sku()}"
    release = asyncio.Event()
    failed: set[str] = set()
    service = Service("orders", settings_for(nats_url, tmp_path))

    @service.consume(subjects.CATALOG_PRODUCT_CREATED, ProductCreated, durable=durable)
    async def slow(event: ProductCreated) -> None:
        if event.product.name == "fails once" and event.id not in failed:
            failed.add(event.id)
            raise RuntimeError("a dependency is down")
        if event.product.name == "waits":
            await release.wait()

    runner = ServiceThread(service).start()
    try:
        async def publish(nc: nats.NATS, *names: str) -> None:
            js = nc.jetstream()
            for name in names:
                event = product_created(name)
                await js.publish(event.subject, event.model_dump_json().encode())

        client.run(lambda nc: publish(nc, "fails once"))
        wait_until(lambda: sample(service, "cartwheel_event_consumer_redeliveries_total", consumer=durable) == 1,
                   "the failed event handled again", 20)

        async def one_at_a_time(nc: nats.NATS) -> None:  # as an operator may set it: the rest wait in the stream
            config: ConsumerConfig = (await nc.jetstream().consumer_info(subjects.EVENTS_STREAM, durable)).config
            config.max_ack_pending = 1
            await nc.jetstream().add_consumer(subjects.EVENTS_STREAM, config=config)

        client.run(one_at_a_time)
        client.run(lambda nc: publish(nc, "waits", "later", "later"))
        service.readiness.consumers_every_s = 0.0  # asked at every check here
        wait_until(lambda: (on_loop(runner, service.readiness.check()),
                            sample(service, "cartwheel_event_consumer_pending", consumer=durable) == 2)[1],
                   "two events waiting behind the one in hand")
        assert sample(service, "cartwheel_event_consumer_ack_pending", consumer=durable) == 1
        runner._loop.call_soon_threadsafe(release.set)
        wait_until(lambda: (on_loop(runner, service.readiness.check()),
                            sample(service, "cartwheel_event_consumer_pending", consumer=durable) == 0)[1],
                   "the backlog handled")
    finally:
        runner.stop()


def product_created(name: str) -> ProductCreated:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return ProductCreated(product=Product(id=f"p-{random_sku()}", sku=random_sku(), name=name, description="",
                                          price_cents=100, currency="EUR", active=True, version=1,
                                          created_at=now, updated_at=now))


def test_a_service_serves_process_metrics_build_info_and_its_readiness(
    nats_url: str, tmp_path: Path
) -> None:
    """A registry of one's own drops what the default one has: CPU, memory, start time; and the build."""
    port = free_port()
    runner = ServiceThread(Service("catalog", settings_for(nats_url, tmp_path, metrics_port=port))).start()
    try:
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
                     "python_info", 'cartwheel_build_info{python=', 'cartwheel_ready{service="catalog"} 1.0',
                     'cartwheel_db_pool_size{service="catalog"}'):
            assert name in text, name
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/readyz") == (200, '{"status": "ok"}')
    finally:
        runner.stop()


def test_health_local_finds_each_replicas_port_under_cartwheel_up(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cartwheel health --local inventory`` asked the settings' metrics port, which under ``cartwheel up`` is the
    gateway's: service i listens on base + i + 1. ``up`` now writes each child's port down, and --local asks those."""
    from cartwheel.health import PORTS_FILE, check_local

    port = free_port()
    runner = ServiceThread(Service("catalog", settings_for(nats_url, tmp_path, metrics_port=port))).start()
    try:
        settings = settings_for(nats_url, tmp_path, metrics_port=free_port())  # nobody listens there
        assert not check_local(settings, ["catalog"])
        (tmp_path / PORTS_FILE).write_text(json.dumps({"pid": os.getpid(), "metrics": {"catalog": [port]}}))
        assert check_local(settings, ["catalog"])
        assert "catalog (this machine): ok" in capsys.readouterr().out
        (tmp_path / PORTS_FILE).write_text(json.dumps({"pid": 2**22 + 1, "metrics": {"catalog": [port]}}))
        assert not check_local(settings, ["catalog"])  # written by a supervisor that is gone: not believed
    finally:
        runner.stop()
