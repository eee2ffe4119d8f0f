"""Lanes with a database per tenant (issue 17): real replica processes, a real nats-server, SQLite and PostgreSQL.

Commands of several tenants share a partition; each applies exactly once, in stream order, in its own tenant's
database, and a replica SIGKILLed between two tenants' commits loses nothing and applies nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import nats
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from cartwheel import subjects
from cartwheel.bus import ensure_stream, request
from cartwheel.contracts.base import Message
from cartwheel.contracts.inventory import GetStock, SetStock
from cartwheel.db import Database, make_postgres_database, migrate
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes import LaneCommand, LaneSpec, Outcome, partition_of, store
from cartwheel.lanes.admin import rebase, show_dead_letters
from cartwheel.lanes.client import LaneClient
from cartwheel.lanes.runtime import stream_config
from cartwheel.lanes.tenancy import FAULT_ENV, KILL_BETWEEN_TENANTS
from cartwheel.outbox import OutboxEvent
from cartwheel.settings import Settings
from cartwheel.tenants.registry import Registry
from services.inventory.domain import LANE as INVENTORY
from tests.helpers import random_sku
from tests.integration.conftest import Client
from tests.integration.test_lanes import Replicas, db_cursor, fresh_replicas, ledger
from tests.lane_replica import LANE, PARTITIONS, SPEC, Ledger

OWN = "default"
TENANTS = ("acme", "globex")


class Shop:
    """The own tenant's database (the ``database_url`` fixture's) and two more tenants' of the same kind."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.own_url = database_url
        self.env: dict[str, str] = {}
        url = make_url(database_url)
        if url.get_backend_name() == "postgresql":
            template = url.set(database=f"{url.database}_{{service}}__{{tenant}}")
            self.env["CARTWHEEL_TENANT_DATABASE_URL"] = (
                template.render_as_string(hide_password=False).replace("%7B", "{").replace("%7D", "}"))
        self.settings = Settings(var_dir=tmp_path, tenant_database_url=self.env.get("CARTWHEEL_TENANT_DATABASE_URL"))
        self.urls = {OWN: database_url} | {t: self.settings.database_url("inventory", t) for t in TENANTS}
        for tenant in TENANTS:
            (tmp_path / "tenants" / tenant).mkdir(parents=True, exist_ok=True)
            make_postgres_database(self.urls[tenant])
            migrate("inventory", self.urls[tenant])

    def drop(self) -> None:
        import psycopg

        for tenant in TENANTS:
            url = make_url(self.urls[tenant])
            if url.get_backend_name() != "postgresql":
                continue
            admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


@pytest.fixture
def shop(database_url: str, tmp_path: Path) -> Iterator[Shop]:
    made = Shop(database_url, tmp_path)
    yield made
    made.drop()


@pytest.fixture
def replicas(nats_url: str, shop: Shop, tmp_path: Path) -> Iterator[Replicas]:
    group = fresh_replicas(Replicas(nats_url, shop.own_url, tmp_path))
    group.env.update(shop.env)
    yield group
    group.stop()


def test_commands_of_three_tenants_on_one_partition_apply_once_each_in_their_own_database(
    replicas: Replicas, shop: Shop, client: Client
) -> None:
    replicas.start(2)
    per_tenant = 25

    async def scenario(nc: nats.NATS) -> dict[str, list[dict[str, Any]]]:
        lanes = await LaneClient(nc, LANE).start()

        async def caller(tenant: str) -> list[dict[str, Any]]:  # the same key in every tenant: one partition
            return [await lanes.call("hot", "append", {"n": n}, tenant=tenant, timeout=15) for n in range(per_tenant)]

        replies = dict(zip((OWN, *TENANTS), await asyncio.gather(*(caller(t) for t in (OWN, *TENANTS))), strict=True))
        for tenant in (OWN, *TENANTS):  # one alarm id in every tenant: each fires in its own database
            await lanes.call("hot", "remind", {"alarm": "wake", "after": 0.5}, tenant=tenant)
        with pytest.raises(DomainError) as refused:  # no databases: answered, and its partition goes on
            await lanes.call("hot", "append", {}, tenant="nobody", timeout=10)
        assert refused.value.code == "unknown_tenant"
        # An older sender's command, without the header: its body names the tenant.
        await nc.jetstream().publish(subjects.lane_command(LANE, "hot"),
                                     json.dumps({"kind": "append", "body": {"tenant": "acme"}}).encode())
        assert (await lanes.call("hot", "append", {}, command_id="after-all", tenant="globex"))["position"] == 26
        # A retry's outcome query looks in its tenant's database.
        ask = subjects.lane_outcome(LANE)
        found = json.loads((await nc.request(ask, json.dumps({"command_id": "after-all", "tenant": "globex"})
                                             .encode(), 5)).data)
        assert found["found"] and found["reply"]["data"]["position"] == 26
        elsewhere = json.loads((await nc.request(ask, json.dumps({"command_id": "after-all", "tenant": "acme"})
                                                 .encode(), 5)).data)
        assert elsewhere == {"found": False, "reply": None}
        unknown = json.loads((await nc.request(ask, json.dumps({"command_id": "x", "tenant": "nobody"})
                                               .encode(), 5)).data)
        assert unknown["found"] and unknown["reply"]["error"]["code"] == "unknown_tenant"
        return replies

    replies = client.run(scenario)
    for tenant, theirs in replies.items():
        state = ledger(shop.urls[tenant], "hot")
        expected = len(theirs) + (tenant != OWN)  # acme: the headerless one; globex: "after-all"
        assert len(state.applied) == expected and len(set(state.applied)) == expected, tenant
        assert state.applied == sorted(state.applied), tenant  # stream order
        assert [r["position"] for r in theirs] == list(range(1, per_tenant + 1)), tenant  # its own state only
        assert [r["sequence"] for r in theirs] == state.applied[:per_tenant], tenant
    partition = partition_of("hot", PARTITIONS)
    last = max(s for t in shop.urls for s in ledger(shop.urls[t], "hot").applied)
    # The low-water mark: past every tenant's commands, within LOW_WATER_EVERY of the last batch.
    wait_until(lambda: db_cursor(shop.own_url, partition) >= last, "the low-water mark past every command", 5)
    wait_until(lambda: all(ledger(url, "hot").fired == ["wake"] for url in shop.urls.values()), "every alarm fired")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def test_a_replica_killed_between_two_tenants_commits_loses_nothing_and_applies_nothing_twice(
    replicas: Replicas, shop: Shop, client: Client, tmp_path: Path
) -> None:
    """The issue's crash test: commands of three tenants wait in one partition; the first replica commits acme's
    part of its first batch and is SIGKILLed there (before its replies, before globex's and the own tenant's
    parts, before the low-water mark moves). A new replica re-reads from the low-water mark: acme's commands are
    skipped by acme's cursor, the others applied; every caller gets the reply its command's effect says. The
    alarm acme's first command set, committed before the kill and never noted in the own database, fires."""
    per_tenant = 10
    order = [(TENANTS[0], TENANTS[1], OWN)[n % 3] for n in range(3 * per_tenant)]  # acme first, interleaved

    async def scenario(nc: nats.NATS) -> tuple[list[dict[str, Any]], dict[str, int]]:
        await ensure_stream(nc.jetstream(), stream_config(SPEC, 1))
        lanes = await LaneClient(nc, LANE).start()
        alarm = asyncio.create_task(lanes.call("k", "remind", {"alarm": "wake", "after": 1}, tenant="acme", timeout=60))
        calls = [asyncio.create_task(lanes.call("k", "append", {"n": n}, command_id=f"c{n}", tenant=tenant,
                                                timeout=60))
                 for n, tenant in enumerate(order)]
        while (await nc.jetstream().stream_info(subjects.lane_stream(LANE))).state.last_seq < len(order) + 1:
            await asyncio.sleep(0.05)
        log = (tmp_path / "doomed.log").open("wb")
        doomed = subprocess.Popen([sys.executable, "-m", "tests.lane_replica"], stdout=log, stderr=subprocess.STDOUT,
                                  env={**replicas.env, FAULT_ENV: KILL_BETWEEN_TENANTS})
        assert await asyncio.to_thread(doomed.wait, 30) == -9, "the replica should have killed itself"
        partition = partition_of("k", PARTITIONS)
        at_crash = {t: db_cursor(url, partition) for t, url in shop.urls.items()}
        await asyncio.to_thread(replicas.start, 1)
        assert "at" in await alarm
        return list(await asyncio.gather(*calls)), at_crash

    replies, at_crash = client.run(scenario)
    assert at_crash[OWN] == 0 and at_crash["globex"] == 0 and at_crash["acme"] >= 1, at_crash
    assert ledger(shop.urls["acme"], "k").applied  # committed before the kill
    for tenant in (OWN, *TENANTS):
        theirs = [r for r, t in zip(replies, order, strict=True) if t == tenant]
        state = ledger(shop.urls[tenant], "k")
        assert len(state.applied) == per_tenant and len(set(state.applied)) == per_tenant, tenant  # once each
        assert [r["sequence"] for r in theirs] == state.applied, tenant  # every reply as its effect says
        assert [r["position"] for r in theirs] == list(range(1, per_tenant + 1)), tenant
    wait_until(lambda: ledger(shop.urls["acme"], "k").fired == ["wake"], "acme's alarm fired")
    assert ledger(shop.urls[OWN], "k").fired == [] and ledger(shop.urls["globex"], "k").fired == []


def test_lanes_rebase_sets_back_every_tenants_cursor_of_a_stream_made_again(
    replicas: Replicas, shop: Shop, client: Client, tmp_path: Path
) -> None:
    """A stream deleted and made again numbers from 1: acme's cursor, in acme's database, is past it as the own
    one is. The partition stops loudly; `cartwheel lanes-rebase` sets both back, and acme's next command applies
    (before: only the own database's cursors were set back, and acme's new commands were skipped)."""
    replicas.start(1)

    async def before(nc: nats.NATS) -> None:
        lanes = await LaneClient(nc, LANE).start()
        for _ in range(3):
            await lanes.call("k1", "append", {}, tenant="acme", timeout=10)
        js = nc.jetstream()
        await js.delete_stream(subjects.lane_stream(LANE))
        await js.add_stream(stream_config(SPEC, 1))

    client.run(before)
    partition = partition_of("k1", PARTITIONS)
    assert db_cursor(shop.urls["acme"], partition) == 3
    wait_until(lambda: db_cursor(shop.own_url, partition) == 3, "the low-water mark follows", 5)

    async def health(nc: nats.NATS) -> dict[str, Any]:
        return json.loads((await nc.request(subjects.health("inventory"), b"", timeout=5)).data)

    wait_until(lambda: client.run(health).get("status") == "degraded", "the lane says it stopped")
    settings = Settings(var_dir=tmp_path, nats_url=replicas.env["CARTWHEEL_NATS_URL"],
                        inventory_database_url=shop.own_url,
                        tenant_database_url=shop.env.get("CARTWHEEL_TENANT_DATABASE_URL"))
    registry = Registry(settings.control_url, reserved=[OWN])
    registry.create("acme", ["acme.test"])
    registry.close()
    assert rebase(settings, "inventory") == 0
    assert db_cursor(shop.urls["acme"], partition) == db_cursor(shop.own_url, partition) == 0

    async def after(nc: nats.NATS) -> dict[str, Any]:
        return await (await LaneClient(nc, LANE).start()).call("k1", "append", {}, tenant="acme", timeout=30)

    assert client.run(after)["position"] == 4  # acme's state kept; its command applied, not skipped


class Noted(Message):
    subject: ClassVar[str] = "events.ledger.noted"
    key: str


def test_a_tenants_part_records_that_tenants_events_and_the_own_part_moves_the_low_water_mark_and_notes(
    database_url: str,
) -> None:
    """The store's side, on either database: a tenant's part writes the events its commands cause as that
    tenant's (whatever tenant the handler put on them); an own part with no commands still moves the cursor (the
    low-water mark) by compare-and-set and notes other tenants' alarms at their earliest."""
    migrate("inventory", database_url)
    spec = LaneSpec(name=LANE, state=Ledger, initial=lambda key: Ledger(),
                    handle=lambda state, command: Outcome(reply={}, state=state, events=[Noted(key=command.key)]))
    at = datetime(2026, 12, 7, tzinfo=UTC)
    command = LaneCommand(id="c5", key="k", kind="append", body={}, sequence=5, issued_at=at)
    db = Database(database_url)
    try:
        part = store.PartitionBatch(0, 0, [store.Incoming(command, None, tenant="acme")], tenant="acme")
        assert db.run_sync(lambda s: store.apply_group(s, spec, [part]))[0].applied
        assert json.loads(db.read_sync(lambda s: s.scalar(select(OutboxEvent.payload))))["tenant"] == "acme"

        def own(expected: int, through: int, notes: dict[str, datetime]) -> bool:
            batch = store.PartitionBatch(1, expected, [], through=through, tenant_alarms=notes)
            return db.run_sync(lambda s: store.apply_group(s, spec, [batch]))[0].applied

        assert own(0, 9, {"acme": at + timedelta(minutes=5)}) and db_cursor(database_url, 1) == 9
        assert not own(0, 12, {"acme": at})  # a second owner's: fenced, nothing noted
        assert own(9, 12, {"acme": at + timedelta(minutes=9), "globex": at})
        notes = db.read_sync(lambda s: store.tenants_with_alarms(s, LANE, [1], at + timedelta(minutes=5)))
        assert sorted(notes) == [(1, "acme"), (1, "globex")]  # acme's earliest kept
        assert db.read_sync(lambda s: store.next_tenant_alarm_at(s, LANE, [1])) == at
        db.run_sync(lambda s: store.set_tenant_alarms(s, LANE, 1, "globex", None))
        assert db.read_sync(lambda s: store.tenants_with_alarms(s, LANE, [1], at)) == []
    finally:
        db.close()


def test_the_inventory_service_applies_a_tenants_stock_in_that_tenants_database(
    nats_url: str, tmp_path: Path, start_service: Callable[..., Any], client: Client
) -> None:
    """The real service, end to end: a tenant's admin command goes into the inventory lane with its tenant, is
    applied in that tenant's database (read back there, not in the own one) and its event says whose it is."""
    settings = Settings(var_dir=tmp_path)
    (tmp_path / "tenants" / "acme").mkdir(parents=True)
    migrate("inventory", settings.database_url("inventory", "acme"))
    fresh_replicas(Replicas(nats_url, settings.database_url("inventory"), tmp_path, lane=INVENTORY.name,
                            partitions=INVENTORY.partitions)).monitor.close()
    start_service("inventory")
    sku = random_sku()

    async def scenario(nc: nats.NATS) -> None:
        events = await nc.subscribe(subjects.INVENTORY_EVENTS)
        await request(nc, SetStock(tenant="acme", product_id=sku, on_hand=7), 10)
        assert (await request(nc, GetStock(tenant="acme", product_id=sku), 10))["on_hand"] == 7
        assert (await request(nc, GetStock(product_id=sku), 10))["on_hand"] == 0  # the own tenant has none
        while (event := json.loads((await events.next_msg(timeout=10)).data))["product_id"] != sku:
            pass
        assert event["tenant"] == "acme"

    client.run(scenario)


def test_a_tenants_command_its_database_refuses_is_set_aside_in_that_database_and_its_partition_goes_on(
    replicas: Replicas, shop: Shop, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    replicas.start(1)

    async def scenario(nc: nats.NATS) -> None:
        lanes = await LaneClient(nc, LANE).start()
        together = await asyncio.gather(
            lanes.call("k", "append", {}, tenant="acme", timeout=15),
            lanes.call("k", "poison", {}, command_id="poison-acme", tenant="acme", timeout=15),
            lanes.call("k", "append", {}, tenant=OWN, timeout=15),
            lanes.call("k", "append", {}, tenant="acme", timeout=15),
            return_exceptions=True,
        )
        assert isinstance(together[1], DomainError) and together[1].code == "dead_letter", together
        assert [r["position"] for r in (together[0], together[3])] == [1, 2]  # acme's others applied
        assert together[2]["position"] == 1  # the own tenant's, beside them

    client.run(scenario)
    settings = Settings(var_dir=replicas.var_dir, inventory_database_url=shop.own_url,
                        tenant_database_url=shop.env.get("CARTWHEEL_TENANT_DATABASE_URL"))
    assert show_dead_letters(settings, "inventory", None, tenant="acme") == 0
    assert "command poison-acme (poison on k" in capsys.readouterr().out
    assert show_dead_letters(settings, "inventory", None) == 0
    assert "0 dead letter(s)" in capsys.readouterr().out  # not in the own database


def test_three_tenants_sell_exactly_their_stock_while_the_owner_is_killed_twice(
    replicas: Replicas, shop: Shop, client: Client
) -> None:
    """Hand-overs under load: three tenants sell one key each (the same key: one partition) with buyers that
    retry under the same command id; the partition's owner is SIGKILLed twice mid-sale and replaced. Each tenant
    sells exactly its stock, every success is in its database, nothing is applied twice."""
    stock, kills = 150, 2
    replicas.start(2)
    sold: dict[str, list[int]] = {t: [] for t in (OWN, *TENANTS)}
    state = {"kills": 0, "done": 0}

    async def scenario(nc: nats.NATS) -> None:
        lanes = await LaneClient(nc, LANE).start()
        for tenant in sold:
            await lanes.call("hot", "stock", {"stock": stock}, tenant=tenant, timeout=15)

        async def buyer(tenant: str, n: int) -> None:
            i = 0
            while True:
                command_id = f"{tenant}-{n}-{i}"
                while True:
                    try:
                        sold[tenant].append((await lanes.call("hot", "take", {}, command_id=command_id,
                                                              tenant=tenant, timeout=3))["sequence"])
                        break
                    except DomainError as refusal:
                        assert refusal.code == "out_of_stock"
                        state["done"] += 1
                        return
                    except ServiceUnavailable:
                        pass  # the same id again: applied at most once
                i += 1
                await asyncio.sleep(0.005)

        async def killer() -> None:
            for k in range(kills):
                while sum(map(len, sold.values())) < (k + 1) * stock:
                    await asyncio.sleep(0.01)
                victim = await asyncio.to_thread(replicas.owner_of, "hot")
                await asyncio.to_thread(replicas.kill, victim)
                state["kills"] += state["done"] == 0
                await asyncio.to_thread(replicas.start, 1)

        await asyncio.gather(killer(), *(buyer(t, n) for t in sold for n in range(4)))

    client.run(scenario)
    assert state["kills"] == kills, state  # both kills struck while every tenant was still selling
    for tenant, sequences in sold.items():
        ledger_of = ledger(shop.urls[tenant], "hot")
        assert len(sequences) == len(set(sequences)) == stock, tenant
        assert ledger_of.stock == 0 and len(ledger_of.applied) == len(set(ledger_of.applied)) == stock + 1, tenant
        assert set(sequences) <= set(ledger_of.applied), tenant
