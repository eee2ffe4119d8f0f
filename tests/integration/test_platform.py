"""Platform pieces against the real things: migrations, outbox relay, event dedup, stream declaration."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cartwheel import natsauth, subjects
from cartwheel.bus import declare_topology, ensure_stream, request
from cartwheel.contracts.catalog import GetProduct, Product, ProductCreated
from cartwheel.db import BatchMiscounted, Database, PlatformBase, migrate
from cartwheel.errors import ServiceUnavailable
from cartwheel.lanes.models import LanesBase
from cartwheel.natsserver import free_port
from cartwheel.outbox import OutboxEvent, OutboxRelay, ProcessedEvent, first_delivery, record_event
from cartwheel.service import Service, event_consumer
from cartwheel.settings import SERVICES
from services.catalog.models import Base as CatalogBase
from services.catalog.models import described_by_models
from services.notifications.models import Base as NotificationsBase
from services.orders.models import Base as OrdersBase
from services.payments.models import Base as PaymentsBase
from tests.helpers import random_sku
from tests.integration.conftest import Client, ServiceThread, settings_for

# Tables each service has beyond the platform's.
SERVICE_METADATA = {
    "catalog": [CatalogBase.metadata],
    "inventory": [LanesBase.metadata],
    "cart": [LanesBase.metadata],
    "orders": [OrdersBase.metadata],
    "payments": [PaymentsBase.metadata],
    "notifications": [NotificationsBase.metadata],
}


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_starts_migrates_and_answers_health(service: str, database_url: str, start_service,
                                                          client: Client) -> None:
    runner = start_service(service, **{f"{service}_database_url": database_url})
    migrate(service, database_url)  # again: a second migrator finds nothing to do

    async def ask(nc: nats.NATS) -> dict:
        return json.loads((await nc.request(subjects.health(service), b"", timeout=5)).data)

    answer = client.run(ask)
    assert answer == {"service": service, "instance": runner.service.instance, "status": "ok", "database": True}


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_match_the_models(service: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / service}.db"
    migrate(service, url)
    metadata = [PlatformBase.metadata, *SERVICE_METADATA.get(service, [])]
    db = Database(url)
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": described_by_models})
        diff = compare_metadata(context, metadata)
    db.close()
    assert diff == []


def test_catalog_migration_matches_models_on_this_backend(database_url: str) -> None:
    migrate("catalog", database_url)
    db = Database(database_url)
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": described_by_models})
        diff = compare_metadata(context, [CatalogBase.metadata, PlatformBase.metadata])
    db.close()
    assert diff == []


def test_readers_do_not_wait_for_a_writer(database_url: str) -> None:
    migrate("catalog", database_url)
    db = Database(database_url)
    writing, release = threading.Event(), threading.Event()

    def slow_write(session: Session) -> None:
        first_delivery(session, "test", "evt-held")
        writing.set()
        release.wait(10)

    writer = threading.Thread(target=db.run_sync, args=(slow_write,))
    writer.start()
    try:
        assert writing.wait(10)
        seen = db.read_sync(lambda s: s.get(ProcessedEvent, ("test", "evt-held")))
        assert seen is None  # read committed data at once, while the write lock is held
    finally:
        release.set()
        writer.join(10)
    assert db.read_sync(lambda s: s.get(ProcessedEvent, ("test", "evt-held"))) is not None
    db.close()


def test_concurrent_migrators_wait_for_each_other(database_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: migrate("catalog", database_url), range(4)))


def event(name: str = "Mug") -> ProductCreated:
    from cartwheel.contracts.base import utcnow

    now = utcnow()
    product = Product(
        id=random_sku(),
        sku=random_sku(),
        name=name,
        description="",
        price_cents=1,
        currency="EUR",
        active=True,
        version=1,
        created_at=now,
        updated_at=now,
    )
    return ProductCreated(product=product)


def test_relay_publishes_in_order_with_dedup_ids_and_marks_rows(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    migrate("catalog", database_url)
    db = Database(database_url)
    events = [event(f"n{i}") for i in range(5)]

    def write(session) -> None:
        for e in events:
            record_event(session, e)

    db.run_sync(write)

    async def scenario() -> list[str]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await declare_topology(js, settings_for(nats_url, tmp_path))
        relay = OutboxRelay(db, js)
        assert await relay.relay_pending() == 5
        assert await relay.relay_pending() == 0  # nothing left, nothing sent twice
        # Re-publishing an already sent event (two relays racing) is dropped by the stream.
        ack = await js.publish(
            subjects.CATALOG_PRODUCT_CREATED,
            events[0].model_dump_json().encode(),
            headers={"Nats-Msg-Id": events[0].id},
        )
        assert ack.duplicate
        ids = []
        sub = await js.subscribe(subjects.CATALOG_PRODUCT_CREATED, ordered_consumer=True)
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                break
            body = json.loads(msg.data)
            if body["id"] in {e.id for e in events}:
                ids.append(body["id"])
        await nc.close()
        return ids

    assert asyncio.run(scenario()) == [e.id for e in events]
    unpublished = db.run_sync(lambda s: s.scalar(select(func.count()).where(OutboxEvent.published_at.is_(None))))
    assert unpublished == 0
    db.close()


class FlakyJetStream:
    """The real JetStream, whose next ``fail`` publishes fail (as when the server does not answer in time)."""

    def __init__(self, js: Any) -> None:
        self.js, self.fail, self.sent = js, 0, []

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise nats.errors.TimeoutError
        self.sent.append(json.loads(payload)["id"])
        return await self.js.publish(subject, payload, **kwargs)


def test_relay_publishes_handed_over_events_from_memory_in_order_and_marks_their_rows_in_bulk(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    """Events a lane hands over after its commit go out without the outbox being read back, and their rows are
    marked by one statement (or by the caller's next transaction, :meth:`take_marks`). Events only ``notify``-ed
    go out first, read from the outbox in order; a failed publish falls back to the outbox, losing nothing and
    keeping the order."""
    migrate("catalog", database_url)
    db = Database(database_url)
    statements: list[str] = []
    sqlalchemy.event.listen(db.engine, "before_cursor_execute",
                            lambda conn, cursor, statement, *rest: statements.append(statement))

    def outbox_reads() -> int:
        return sum(1 for s in statements if s.lstrip().startswith("SELECT") and "FROM outbox" in s)

    def recorded(*names: str) -> list[ProductCreated]:
        made = [event(name) for name in names]
        db.run_sync(lambda s: [record_event(s, e) for e in made])
        return made

    async def scenario() -> list[str]:
        nc = await nats.connect(nats_url)
        js = FlakyJetStream(nc.jetstream())
        await declare_topology(js.js, settings_for(nats_url, tmp_path))
        relay = OutboxRelay(db, js, idle=60, interval=0.2, mark_every=0.3)  # type: ignore[arg-type]
        relay.start()
        await asyncio.sleep(0.3)  # its first look at the outbox: empty
        reads = outbox_reads()

        handed = recorded("h1", "h2", "h3")
        relay.committed(handed, [None] * 3)
        await until(lambda: len(js.sent) == 3)
        assert outbox_reads() == reads  # from memory
        await asyncio.sleep(0.5)  # the marks are due: one UPDATE for the three
        assert outbox_reads() == reads and unpublished() == 0  # (that count is a read of its own)
        assert relay.take_marks() == []

        told = recorded("n1")  # recorded elsewhere and only notified, then a lane's commit right after
        relay.notify()
        handed_after = recorded("h4")
        relay.committed(handed_after, [None])
        await until(lambda: len(js.sent) == 5)

        js.fail = 1  # the next publish fails: the relay reads the outbox from there, in order
        failing, then = recorded("f1"), recorded("f2")
        relay.committed(failing, [None])
        relay.committed(then, [None])
        await until(lambda: len(js.sent) == 7, timeout=5)
        await relay.stop()
        await nc.close()
        ids = [e.id for e in handed + told + handed_after + failing + then]
        assert js.sent == ids  # each once, in commit order
        return ids

    def unpublished() -> int:
        return db.read_sync(lambda s: s.scalar(select(func.count()).where(OutboxEvent.published_at.is_(None))))

    asyncio.run(scenario())
    assert unpublished() == 0
    db.close()


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


def test_relay_keeps_events_it_could_not_publish(database_url: str) -> None:
    migrate("catalog", database_url)
    db = Database(database_url)
    db.run_sync(lambda s: record_event(s, event()))

    class UnreachableJetStream:
        async def publish(self, *args: object, **kwargs: object) -> None:
            raise nats.errors.NoRespondersError

    asyncio.run(OutboxRelay(db, UnreachableJetStream()).relay_pending())  # type: ignore[arg-type]
    row = db.run_sync(lambda s: s.scalars(select(OutboxEvent)).one())
    assert row.published_at is None and row.attempts == 1 and row.last_error
    db.close()


def test_relay_stops_promptly_even_when_woken_as_it_stops(tmp_path: Path) -> None:
    migrate("catalog", f"sqlite:///{tmp_path}/c.db")
    db = Database(f"sqlite:///{tmp_path}/c.db")

    class NoJetStream:
        async def publish(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("nothing to publish")

    async def scenario() -> None:
        for _ in range(200):
            relay = OutboxRelay(db, NoJetStream(), interval=0.01)  # type: ignore[arg-type]
            relay.start()
            await asyncio.sleep(0)
            relay.notify()  # the wake-up and the stop arrive together
            await asyncio.wait_for(relay.stop(), 5)

    asyncio.run(scenario())
    db.close()


def test_first_delivery_is_recorded_once(database_url: str) -> None:
    migrate("catalog", database_url)
    db = Database(database_url)
    assert db.run_sync(lambda s: first_delivery(s, "inventory", "evt-1")) is True
    assert db.run_sync(lambda s: first_delivery(s, "inventory", "evt-1")) is False
    assert db.run_sync(lambda s: first_delivery(s, "orders", "evt-1")) is True
    with pytest.raises(IntegrityError), db.transaction() as s:  # a racing twin fails at flush, not silently
        s.add(ProcessedEvent(consumer="inventory", event_id="evt-1"))
        s.flush()
    db.close()


def test_stream_declaration_is_idempotent_and_repairs_drift(nats_url: str) -> None:
    name = f"TEST_{random_sku().replace('-', '_').upper()}"
    config = StreamConfig(name=name, subjects=[f"{name.lower()}.>"], max_age=3600.0, duplicate_window=60.0)

    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_stream(js, config)
        await ensure_stream(js, config)
        await js.update_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.other"], max_age=10.0))
        await ensure_stream(js, config)
        info = await js.stream_info(name)
        assert info.config.subjects == config.subjects and info.config.max_age == 3600.0
        await js.delete_stream(name)
        await nc.close()

    asyncio.run(scenario())


def test_request_without_a_listener_is_unavailable_not_a_hang(nats_url: str) -> None:
    client = Client(nats_url)

    async def scenario(nc: nats.NATS) -> None:
        with pytest.raises(ServiceUnavailable):
            await request(nc, GetProduct(id_or_sku="x"), 1.0, subject=f"nobody.{random_sku()}")
        silent = await nc.subscribe(f"silent.{random_sku()}")
        with pytest.raises(ServiceUnavailable) as caught:
            await request(nc, GetProduct(id_or_sku="x"), 0.3, subject=silent.subject)
        assert "no answer" in str(caught.value)

    client.run(scenario)
    client.close()


def test_an_event_whose_handler_fails_comes_back(nats_url: str, tmp_path: Path, client: Client) -> None:
    now = datetime.now(UTC)
    mine = ProductCreated(product=Product(id=f"p-{random_sku()}", sku=random_sku(), name="Flaky", description="",
                                          price_cents=100, currency="EUR", active=True, version=1,
                                          created_at=now, updated_at=now))
    seen: list[str] = []
    service = Service("orders", settings_for(nats_url, tmp_path))

    @service.consume(subjects.CATALOG_PRODUCT_CREATED, ProductCreated, durable=f"flaky_{random_sku()}")
    async def flaky(event: ProductCreated) -> None:
        if event.id == mine.id:
            seen.append(event.id)
            if len(seen) == 1:
                raise RuntimeError("a dependency is down")

    runner = ServiceThread(service).start()
    try:
        async def publish(nc: nats.NATS) -> None:
            await nc.jetstream().publish(mine.subject, mine.model_dump_json().encode())

        client.run(publish)
        deadline = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen == [mine.id, mine.id]  # failed once, handled the second time, then acknowledged
    finally:
        runner.stop()


def test_an_event_that_does_not_parse_is_dropped_not_retried(nats_url: str, tmp_path: Path, client: Client) -> None:
    now = datetime.now(UTC)
    good = ProductCreated(product=Product(id=f"p-{random_sku()}", sku=random_sku(), name="Fine", description="",
                                          price_cents=100, currency="EUR", active=True, version=1,
                                          created_at=now, updated_at=now))
    durable = f"strict_{random_sku()}"
    seen: list[str] = []
    service = Service("orders", settings_for(nats_url, tmp_path))

    @service.consume(subjects.CATALOG_PRODUCT_CREATED, ProductCreated, durable=durable)
    async def strict(event: ProductCreated) -> None:
        seen.append(event.id)

    runner = ServiceThread(service).start()
    try:
        async def publish(nc: nats.NATS) -> None:
            js = nc.jetstream()
            await js.publish(good.subject, b'{"not": "an event"}')
            await js.publish(good.subject, good.model_dump_json().encode())

        client.run(publish)
        deadline = time.monotonic() + 15
        while good.id not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
        assert good.id in seen

        async def pending(nc: nats.NATS) -> tuple[int, int]:
            info = await nc.jetstream().consumer_info(subjects.EVENTS_STREAM, durable)
            return info.num_ack_pending, info.num_redelivered

        time.sleep(0.5)
        assert client.run(pending) == (0, 0)  # the bad one was terminated at once, not left to come back
    finally:
        runner.stop()


def test_replicas_starting_together_share_one_event_consumer(nats_url: str, tmp_path: Path) -> None:
    """Every replica asked for the EVENTS consumer with a deliver inbox of its own: started together (an
    orchestrator does), all but the first could fail with "consumer name already in use" and exit (seen once
    with 3 inventory replicas; this test does not make that race happen at will). Now they all ask for the same
    config, deliver subject included, which the server answers idempotently: checked here."""
    durable = f"together_{random_sku()}"

    async def subscribe_together() -> list[str]:
        clients = [await nats.connect(nats_url) for _ in range(4)]
        await declare_topology(clients[0].jetstream(), settings_for(nats_url, tmp_path))
        try:
            subscriptions = await asyncio.gather(*(
                nc.jetstream().subscribe(subjects.CATALOG_PRODUCT_CREATED, queue=durable, stream=subjects.EVENTS_STREAM,
                                         config=event_consumer("catalog", durable), cb=lambda msg: msg.ack())
                for nc in clients
            ))
            return [(await sub.consumer_info()).config.deliver_subject for sub in subscriptions]
        finally:
            for nc in clients:
                await nc.close()
            async with await nats.connect(nats_url) as nc:
                await nc.jetstream().delete_consumer(subjects.EVENTS_STREAM, durable)

    wanted = subjects.event_delivery(natsauth.inbox_prefix("catalog"), durable)
    assert set(asyncio.run(subscribe_together())) == {wanted}


def test_an_event_consumer_made_by_an_older_version_moves_to_the_services_own_inbox(
        nats_url: str, tmp_path: Path, client: Client) -> None:
    """Durables used to deliver to ``_INBOX.cartwheel.events.<durable>``, where on an authenticated bus a
    service may not subscribe; nats-py subscribes where the stored consumer says, so without the move an
    upgraded service would hear nothing. The consumer keeps its place: an event published before the upgrade
    and not yet handled still arrives."""
    now = datetime.now(UTC)
    event = ProductCreated(product=Product(id=f"p-{random_sku()}", sku=random_sku(), name="Old", description="",
                                           price_cents=100, currency="EUR", active=True, version=1,
                                           created_at=now, updated_at=now))
    durable = f"upgraded_{random_sku()}"

    async def old_consumer(nc: nats.NATS) -> None:
        js = nc.jetstream()
        await declare_topology(js, settings_for(nats_url, tmp_path))
        last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
        await js.add_consumer(subjects.EVENTS_STREAM, config=ConsumerConfig(
            durable_name=durable, deliver_group=durable, deliver_subject=f"_INBOX.cartwheel.events.{durable}",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1,
            filter_subject=subjects.CATALOG_PRODUCT_CREATED, ack_policy=AckPolicy.EXPLICIT))
        await js.publish(event.subject, event.model_dump_json().encode())

    client.run(old_consumer)
    seen: list[str] = []
    service = Service("inventory", settings_for(nats_url, tmp_path))

    @service.consume(subjects.CATALOG_PRODUCT_CREATED, ProductCreated, durable=durable)
    async def heard(got: ProductCreated) -> None:
        seen.append(got.id)

    runner = ServiceThread(service).start()
    try:
        deadline = time.monotonic() + 15
        while event.id not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen == [event.id]

        async def delivery(nc: nats.NATS) -> str | None:
            return (await nc.jetstream().consumer_info(subjects.EVENTS_STREAM, durable)).config.deliver_subject

        assert client.run(delivery) == subjects.event_delivery(natsauth.inbox_prefix("inventory"), durable)
    finally:
        runner.stop()
        client.run(lambda nc: nc.jetstream().delete_consumer(subjects.EVENTS_STREAM, durable))


# A process that opens a new SQLite file at an agreed instant, then takes the write lock once.
_FIRST_OPENER = """
import sys, time
from sqlalchemy import text
from cartwheel.db import make_engine
folder, start, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
for n in range(rounds):
    time.sleep(max(0.0, start + n * 0.25 - time.time()))
    engine = make_engine(f"sqlite:///{folder}/db{n}.sqlite", pool_size=1)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS opened (n INTEGER)"))
    engine.dispose()
"""


def test_processes_opening_a_new_sqlite_file_at_once_all_get_in(tmp_path: Path) -> None:
    # Replicas and `cartwheel up` open a fresh file together: switching it to WAL answered
    # "database is locked" at once (no busy wait) to all but one of them.
    import subprocess
    import sys

    rounds, start = 16, time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", _FIRST_OPENER, str(tmp_path), str(start), str(rounds)],
                         stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    failures = [p.communicate(timeout=60)[1] for p in procs if p.wait(timeout=60) != 0]
    assert failures == []


def test_writes_asked_for_together_share_transactions_and_one_that_fails_fails_alone(database_url: str) -> None:
    from sqlalchemy import event as sa_event

    migrate("catalog", database_url)
    db = Database(database_url)
    commits: list[int] = []
    sa_event.listen(db.engine, "commit", lambda _conn: commits.append(1))
    stamp = random_sku()

    def mark(event_id: str) -> Callable[[Session], bool]:
        return lambda session: first_delivery(session, "grouped", event_id)

    def broken(session: Session) -> None:
        first_delivery(session, "grouped", f"{stamp}-broken")
        raise ValueError("refused")

    async def scenario() -> list[object]:
        writes = [db.run_together(mark(f"{stamp}-{i}")) for i in range(30)]
        return await asyncio.gather(*writes[:15], db.run_together(broken), *writes[15:], return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert [o for o in outcomes if not isinstance(o, bool)] == [outcomes[15]]
    assert isinstance(outcomes[15], ValueError)
    kept = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(ProcessedEvent)
                                           .where(ProcessedEvent.event_id.like(f"{stamp}-%"))))
    assert kept == 30  # the broken write's row went with its savepoint
    assert len(commits) < 10  # 31 writes asked for at once: a few transactions, not one each
    db.close()


def test_writes_of_one_kind_asked_for_together_go_in_one_call_and_one_that_fails_fails_alone(
    database_url: str,
) -> None:
    migrate("catalog", database_url)
    db = Database(database_url)
    calls: list[int] = []
    stamp = random_sku()

    def mark_all(session: Session, event_ids: list[str]) -> list[str]:  # one multi-row insert
        calls.append(len(event_ids))
        session.execute(insert(ProcessedEvent.__table__), [
            {"consumer": "batched", "event_id": event_id, "processed_at": datetime.now(UTC)} for event_id in event_ids
        ])
        return event_ids

    async def together(event_ids: list[str]) -> list[object]:
        return await asyncio.gather(*(db.run_batched(mark_all, e) for e in event_ids), return_exceptions=True)

    fresh = [f"{stamp}-{i}" for i in range(30)]
    assert asyncio.run(together(fresh)) == fresh
    assert calls == [30]  # asked for at once: one group, one call for all thirty

    calls.clear()
    more = [f"{stamp}-more-{i}" for i in range(30)]
    outcomes = asyncio.run(together([*more[:15], fresh[0], *more[15:]]))  # fresh[0] is taken
    assert isinstance(outcomes.pop(15), IntegrityError) and outcomes == more
    assert calls == [31, *[1] * 31]  # the group's call failed: each alone, in a savepoint of its own
    kept = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(ProcessedEvent)
                                           .where(ProcessedEvent.event_id.like(f"{stamp}-%"))))
    assert kept == 60
    db.close()


def test_a_batch_that_miscounts_its_outcomes_fails_its_callers_and_writes_nothing(database_url: str) -> None:
    """A programming error, not a refused write: before, a group's rows were committed while each caller
    was told IntegrityError (retried alone after the count failed); one alone left its caller waiting."""
    migrate("catalog", database_url)
    db = Database(database_url)
    stamp = random_sku()

    def miscounted(session: Session, event_ids: list[str]) -> list[str]:
        session.execute(insert(ProcessedEvent.__table__), [
            {"consumer": "miscounted", "event_id": e, "processed_at": datetime.now(UTC)} for e in event_ids
        ])
        return event_ids[1:]

    async def write(event_ids: list[str]) -> list[object]:
        asked = (db.run_batched(miscounted, e) for e in event_ids)
        return await asyncio.wait_for(asyncio.gather(*asked, return_exceptions=True), 10)

    for event_ids in ([f"{stamp}-alone"], [f"{stamp}-{i}" for i in range(3)]):
        outcomes = asyncio.run(write(event_ids))
        assert all(isinstance(o, BatchMiscounted) for o in outcomes), outcomes
    kept = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(ProcessedEvent)
                                           .where(ProcessedEvent.event_id.like(f"{stamp}-%"))))
    assert kept == 0
    db.close()


def test_every_replica_answers_the_health_subject(database_url: str, start_service, client: Client) -> None:
    replicas = {start_service("catalog", catalog_database_url=database_url).service.instance for _ in range(2)}

    async def ask_all(nc: nats.NATS) -> set[str]:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subjects.health("catalog"), b"", reply=inbox)
        seen: set[str] = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not replicas <= seen:
            with contextlib.suppress(nats.errors.TimeoutError):
                seen.add(json.loads((await sub.next_msg(timeout=0.5)).data)["instance"])
        await sub.unsubscribe()
        return seen

    assert replicas <= client.run(ask_all)  # a probe of the health subject sees every replica, no queue group


def test_cartwheel_health_without_nats_says_why_and_exits_1_at_once(tmp_path: Path) -> None:
    """Issue 15, item 2: `cartwheel health` with NATS down hung for ever (nats-py retried a refused first connect
    without end at max_reconnect_attempts=0), a traceback every 2 s. Now: exit 1 within seconds, with the reason."""
    env = {**os.environ, "CARTWHEEL_NATS_URL": f"nats://127.0.0.1:{free_port()}", "CARTWHEEL_VAR_DIR": str(tmp_path)}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cartwheel.cli", "health", "cart", "inventory"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and time.monotonic() - began < 15
    assert done.stdout.splitlines() == [
        f"{name}: NOT HEALTHY (NATS at {env['CARTWHEEL_NATS_URL']} did not answer "
        "(nats: no servers available for connection))" for name in ("cart", "inventory")]
    assert "Traceback" not in done.stdout + done.stderr
