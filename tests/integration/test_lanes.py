"""The lanes runtime with real replica processes on a real nats-server and database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from cartwheel import subjects
from cartwheel.contracts.base import utcnow
from cartwheel.db import Database, migrate
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes import partition_of, store
from cartwheel.lanes.admin import rebase, show_dead_letters
from cartwheel.lanes.client import LaneClient
from cartwheel.lanes.models import LaneState
from cartwheel.lanes.runtime import STREAM_CHECK_SECONDS, PartitionsChanged, check_partitions, stream_config
from cartwheel.lanes.store import load_states
from cartwheel.settings import Settings
from services.inventory.domain import LANE as INVENTORY
from services.inventory.state import Stock
from tests.integration.conftest import Client
from tests.lane_replica import LANE, PARTITIONS, SPEC, TICK, Ledger


class Replicas:
    """Replica processes of the test lane, and what the lease bucket says about them."""

    def __init__(
        self,
        nats_url: str,
        database_url: str,
        var_dir: Path,
        *,
        module: str = "tests.lane_replica",
        lane: str = LANE,
        partitions: int = PARTITIONS,
    ) -> None:
        self.module = module
        self.lane = lane
        self.partitions = partitions
        self.env = {
            **os.environ,
            "CARTWHEEL_NATS_URL": nats_url,
            "CARTWHEEL_VAR_DIR": str(var_dir),
            "CARTWHEEL_INVENTORY_DATABASE_URL": database_url,
            "CARTWHEEL_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self.var_dir = var_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.monitor = Client(nats_url)  # its own connection: scenarios run on the test's client

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            log = (self.var_dir / f"replica-{len(self.processes)}.log").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        self.wait_for(
            lambda owners: set(owners) == set(range(self.partitions)) and self.live_pids() <= self.owner_pids(owners),
            "every partition owned and every replica working",
        )
        died = [p.args for p in self.processes[-count:] if p.poll() is not None]
        assert not died, f"a replica exited at start; see {self.var_dir}/replica-*.log"

    def live_pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.poll() is None}

    @staticmethod
    def owner_pids(owners: dict[int, str]) -> set[int]:
        return {int(member.split("-")[-2]) for member in owners.values()}

    def owners(self) -> dict[int, str]:
        async def read(nc: nats.NATS) -> dict[int, str]:
            kv = await nc.jetstream().key_value(subjects.lane_bucket(self.lane))
            found = {}
            for p in range(self.partitions):
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    found[p] = (await kv.get(f"lease.{p}")).value.decode()
            return found

        try:
            return self.monitor.run(read)
        except nats.js.errors.BucketNotFoundError:
            return {}

    def wait_for(self, condition: Callable[[dict[int, str]], bool], what: str, timeout: float = 20.0) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owners = self.owners()
            if condition(owners):
                return owners
            time.sleep(0.1)
        raise AssertionError(f"not reached within {timeout} s: {what}; owners now {self.owners()}")

    def owner_of(self, key: str) -> int:
        partition = partition_of(key, self.partitions)
        owners = self.wait_for(  # not mid-takeover, and not a killed replica whose lease has yet to expire
            lambda o: partition in o and int(o[partition].split("-")[-2]) in self.live_pids(),
            f"partition {partition} owned by a live replica",
        )
        return int(owners[partition].split("-")[-2])

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        os.kill(pid, sig)
        next(p for p in self.processes if p.pid == pid).wait(15)

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.monitor.close()


def fresh_replicas(group: Replicas) -> Replicas:
    async def fresh_lane(nc: nats.NATS) -> None:
        js = nc.jetstream()
        for remove in (
            js.delete_stream(subjects.lane_stream(group.lane)),
            js.delete_key_value(subjects.lane_bucket(group.lane)),
        ):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await remove

    group.monitor.run(fresh_lane)  # tests share one NATS: no commands of an earlier test may linger
    return group


@pytest.fixture
def replicas(nats_url: str, database_url: str, tmp_path: Path) -> Iterator[Replicas]:
    group = fresh_replicas(Replicas(nats_url, database_url, tmp_path))
    yield group
    group.stop()


@pytest.fixture
def inventory_replicas(nats_url: str, database_url: str, tmp_path: Path) -> Iterator[Replicas]:
    """Real inventory services, as `cartwheel run inventory` starts them."""
    group = fresh_replicas(
        Replicas(
            nats_url,
            database_url,
            tmp_path,
            module="services.inventory",
            lane=INVENTORY.name,
            partitions=INVENTORY.partitions,
        )
    )
    yield group
    group.stop()


def ledger(database_url: str, key: str) -> Ledger:
    db = Database(database_url)
    state = db.read_sync(lambda s: load_states(s, LANE, [key])).get(key)
    db.close()
    return Ledger.model_validate_json(state) if state else Ledger()


async def lane_client(nc: nats.NATS) -> LaneClient:
    return await LaneClient(nc, LANE).start()


def test_partition_of_is_the_servers_mapping(replicas: Replicas, client: Client) -> None:
    replicas.start(1)

    async def scenario(nc: nats.NATS) -> dict[str, int]:
        js = nc.jetstream()
        keys = [f"key-{i}" for i in range(64)]
        for key in keys:
            await js.publish(
                subjects.lane_command(LANE, "x" + key), json.dumps({"kind": "append", "body": {}}).encode()
            )
        stored = {}
        sub = await js.subscribe(f"{LANE}.part.*.*", stream=subjects.lane_stream(LANE), ordered_consumer=True)
        while len(stored) < len(keys):
            msg = await sub.next_msg(timeout=5)
            stored[msg.subject.split(".", 3)[3][1:]] = int(msg.subject.split(".")[2])
        await sub.unsubscribe()
        return stored

    for key, partition in client.run(scenario).items():
        assert partition == partition_of("x" + key, PARTITIONS), key


def test_one_key_applies_in_stream_order_across_three_replicas(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    replicas.start(3)

    async def scenario(nc: nats.NATS) -> list[tuple[int, list[dict[str, Any]]]]:
        client = await lane_client(nc)

        async def caller(n: int) -> tuple[int, list[dict[str, Any]]]:
            return n, [await client.call("hot", "append", {"caller": n}, timeout=15) for _ in range(25)]

        return await asyncio.gather(*(caller(n) for n in range(20)))

    results = client.run(scenario)
    replies = sorted((r for _, rs in results for r in rs), key=lambda r: r["sequence"])
    assert [r["position"] for r in replies] == list(range(1, len(replies) + 1))  # applied in stream order
    for _, own in results:  # each caller's commands, sent one after another, applied in that order
        assert [r["sequence"] for r in own] == sorted(r["sequence"] for r in own)
    assert ledger(database_url, "hot").applied == [r["sequence"] for r in replies]


def test_partitions_spread_evenly_and_hand_over(replicas: Replicas, client: Client) -> None:
    replicas.start(3)
    replicas.wait_for(lambda o: sorted(Counter(o.values()).values()) == [2, 3, 3], "8 partitions dealt 3/3/2")
    leaving = replicas.owner_of("any-key")
    started = time.monotonic()
    replicas.kill(leaving, signal.SIGTERM)
    owners = replicas.wait_for(
        lambda o: len(o) == PARTITIONS and leaving not in replicas.owner_pids(o),
        "the leaving replica's partitions taken over",
        timeout=10,
    )
    handed_over_in = time.monotonic() - started
    assert sorted(Counter(owners.values()).values()) == [4, 4]
    assert handed_over_in < 5, f"graceful hand-over took {handed_over_in:.1f} s"
    replicas.start(1)
    replicas.wait_for(lambda o: sorted(Counter(o.values()).values()) == [2, 3, 3], "rebalanced 3/3/2 after a join")


def test_idle_replicas_send_their_heartbeats_and_nothing_else(replicas: Replicas, client: Client) -> None:
    """Before issue 12, every round renewed every lease a replica held and listed the bucket (a new
    consumer, its info and deletion), several times a second per lane: a third of an idle shop's CPU,
    nats-server's included."""
    replicas.start(2)
    replicas.wait_for(lambda o: sorted(Counter(o.values()).values()) == [4, 4], "dealt 4/4: no hand-over under way")
    time.sleep(1)  # a lease is taken before its partition's consumer is made: let the last ones start
    heard: Counter[str] = Counter()

    async def listen(nc: nats.NATS) -> None:
        async def count(msg: nats.aio.msg.Msg) -> None:
            heard[msg.subject.split(".")[2]] += 1  # $JS.API.CONSUMER..., $KV.<bucket>.member...

        sub = await nc.subscribe("$JS.API.>", cb=count)
        kv = await nc.subscribe(f"$KV.{subjects.lane_bucket(LANE)}.>", cb=count)
        await asyncio.sleep(3)
        await sub.unsubscribe()
        await kv.unsubscribe()

    client.run(listen)
    # No lease renewed, no bucket listed (before: a consumer made and read every round, ~50 in these 3 s); at
    # most a partition's consumer made anew by nats-py (an ordered consumer that missed a heartbeat on a busy
    # machine resets itself).
    assert set(heard) <= {"member", "CONSUMER"} and heard["CONSUMER"] <= 2, heard
    assert heard["member"] <= 2 * 2 * (3 / TICK + 1), heard  # a heartbeat a tick each, not a round running hot


def test_a_killed_owner_loses_nothing_and_applies_nothing_twice(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    stock, kills, every = 2000, 3, 400
    replicas.start(3)
    outcome: dict[str, Any] = {"sold": [], "refused": 0, "retries": 0, "kills_during_sale": 0}

    async def scenario(nc: nats.NATS) -> None:
        client = await lane_client(nc)
        await client.call("hot", "stock", {"stock": stock}, timeout=15)
        done = asyncio.Event()

        async def buyer(n: int) -> None:
            i = 0
            while not done.is_set():
                # The sale outlasts the kills whatever the speed of a takeover: the buyers wait for the next
                # kill once they are well past the point where the killer strikes.
                while (outcome["kills_during_sale"] < kills
                       and len(outcome["sold"]) >= every * (outcome["kills_during_sale"] + 1) + 200):
                    await asyncio.sleep(0.01)
                command_id = f"buyer{n}-{i}"
                while True:
                    try:
                        reply = await client.call("hot", "take", {}, command_id=command_id, timeout=3)
                        outcome["sold"].append(reply["sequence"])
                        await asyncio.sleep(0.01)
                        break
                    except DomainError as refusal:
                        assert refusal.code == "out_of_stock"
                        outcome["refused"] += 1
                        done.set()
                        break
                    except ServiceUnavailable:
                        outcome["retries"] += 1  # the same id again: applied at most once
                i += 1

        async def killer() -> None:
            for k in range(kills):
                while len(outcome["sold"]) < every * (k + 1) and not done.is_set():  # strike while the sale is on
                    await asyncio.sleep(0.01)
                victim = await asyncio.to_thread(replicas.owner_of, "hot")
                await asyncio.to_thread(replicas.kill, victim)
                outcome["kills_during_sale"] += not done.is_set()
                await asyncio.to_thread(replicas.start, 1)  # as an orchestrator would replace it

        await asyncio.gather(killer(), *(buyer(n) for n in range(20)))

    client.run(scenario)
    state = ledger(database_url, "hot")
    assert outcome["kills_during_sale"] == kills, outcome
    assert len(outcome["sold"]) == stock, outcome
    assert len(set(outcome["sold"])) == stock  # every success a distinct command
    assert state.stock == 0
    assert len(state.applied) == len(set(state.applied))  # nothing applied twice
    assert set(outcome["sold"]) <= set(state.applied)  # every success is in the database
    owners = replicas.wait_for(
        lambda o: len(o) == PARTITIONS and replicas.owner_pids(o) <= replicas.live_pids(),
        "partitions owned by live replicas only",
    )
    assert sorted(Counter(owners.values()).values()) == [2, 3, 3]


def test_a_retried_command_id_gets_the_first_reply(replicas: Replicas, database_url: str, client: Client) -> None:
    replicas.start(1)

    async def scenario(nc: nats.NATS) -> None:
        client = await lane_client(nc)
        await client.call("k1", "stock", {"stock": 5})
        first = await client.call("k1", "take", {}, command_id="take-once")
        again = await client.call("k1", "take", {}, command_id="take-once")
        assert first == again and first["left"] == 4
        together = await asyncio.gather(*(client.call("k1", "take", {}, command_id="take-twice") for _ in range(5)))
        assert len({json.dumps(r) for r in together}) == 1 and together[0]["left"] == 3
        # Past the stream's duplicate window the database's record answers: ask it the way a retry does.
        answer = await nc.request(subjects.lane_outcome(LANE), json.dumps({"command_id": "take-once"}).encode(), 5)
        assert json.loads(answer.data) == {"found": True, "reply": {"ok": True, "data": first, "error": None}}

    client.run(scenario)
    assert ledger(database_url, "k1").stock == 3


def test_commands_the_lane_cannot_read_or_store_are_answered_and_their_partition_goes_on(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    """Issue 14, R1 and R2: a command that is not JSON, an envelope that is not an object, an alarm without its
    fields, a command id longer than the column, a state the database can't store: each made its partition
    re-read from the cursor forever (1,542 restarts in 8 s), every other key of it unanswered. Now each is
    answered as failed (the last set aside as a dead letter) and the next command of the key applies."""
    replicas.start(1)
    key = "k-poisoned"
    subject = subjects.lane_command(LANE, key)

    async def scenario(nc: nats.NATS) -> list[dict[str, Any]]:
        lanes = await lane_client(nc)
        inbox = nc.new_inbox()
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        async def heard(msg: Any) -> None:
            replies.put_nowait(msg.data)

        await nc.subscribe(f"{inbox}.*", cb=heard)
        raw = [(b"not json", "raw-1"), (b"[1, 2]", "raw-2"), (b'{"kind": "alarm", "body": "x"}', "raw-3"),
               (b'{"kind": "append", "body": {}}', "x" * 150), (b'{"kind": "append", "body": {}}', "not/a token"),
               (b"[" * 100_000, "raw-deep")]
        answers = []
        for data, command_id in raw:
            await nc.publish(subject, data, headers={"Nats-Msg-Id": command_id,
                                                     subjects.LANE_REPLY_HEADER: f"{inbox}.{len(answers)}"})
            answers.append(json.loads(await asyncio.wait_for(replies.get(), 10)))
        with pytest.raises(DomainError) as poisoned:
            await lanes.call(key, "poison", {}, command_id="poison-1", timeout=10)
        answers.append({"ok": False, "error": {"code": poisoned.value.code}})
        started = time.monotonic()
        after = await lanes.call(key, "append", {}, timeout=10)
        answers.append({"ok": True, "data": after, "within": time.monotonic() - started})
        return answers

    answers = client.run(scenario)
    assert [a["error"]["code"] for a in answers[:7]] == ["malformed_command"] * 6 + ["dead_letter"]
    assert answers[7]["ok"] and answers[7]["within"] < 5
    assert ledger(database_url, key).applied == [answers[7]["data"]["sequence"]]  # the poison changed nothing
    db = Database(database_url)
    try:
        letters = db.read_sync(lambda s: store.dead_letters(s, LANE))
    finally:
        db.close()
    assert [(d.command_id, d.kind, d.key) for d in letters] == [("poison-1", "poison", key)]
    assert "serializ" in letters[0].error.lower()
    # The operator's side: list them, send one again (still poisonous here: set aside again, under its new id).
    settings = Settings(var_dir=replicas.var_dir, nats_url=replicas.env["CARTWHEEL_NATS_URL"],
                        inventory_database_url=database_url)
    assert show_dead_letters(settings, "inventory", None) == 0
    assert show_dead_letters(settings, "inventory", "poison-1") == 0
    db = Database(database_url)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            again = [d.command_id for d in db.read_sync(lambda s: store.dead_letters(s, LANE))]
            if again != ["poison-1"] and again:
                break
            time.sleep(0.1)
        assert len(again) == 1 and again[0].startswith("replay-")  # the first went, its replay was set aside
    finally:
        db.close()
    assert show_dead_letters(settings, "inventory", "no-such-command") == 1


def test_a_stored_state_that_no_longer_reads_refuses_its_key_and_spares_the_others(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    """Issue 14, R1: a state row that no longer fits its model failed every batch of its partition."""
    broken = "k-broken"
    neighbour = next(f"k-{i}" for i in range(1000)
                     if partition_of(f"k-{i}", PARTITIONS) == partition_of(broken, PARTITIONS) and f"k-{i}" != broken)
    db = Database(database_url)
    try:
        migrate("inventory", database_url)
        db.run_sync(lambda s: s.add(LaneState(lane=LANE, key=broken, state='{"stock": "lots"}', updated_at=utcnow())))
    finally:
        db.close()
    replicas.start(1)

    async def scenario(nc: nats.NATS) -> tuple[str, dict[str, Any]]:
        lanes = await lane_client(nc)
        with pytest.raises(DomainError) as refused:
            await lanes.call(broken, "append", {}, timeout=10)
        return refused.value.code, await lanes.call(neighbour, "append", {}, timeout=10)

    code, answer = client.run(scenario)
    assert code == "state_unreadable" and answer["position"] == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the bucket is NATS's: one database suffices
def test_a_lost_lease_bucket_is_made_again_and_a_replica_that_dies_afterwards_is_replaced(
    replicas: Replicas, client: Client
) -> None:
    """Issue 14, R3: the lease bucket lived in memory; a restarted nats-server lost it, nothing made it again,
    every ownership round failed, and a replica that died afterwards was never replaced. Here the bucket is
    deleted under two running replicas (what a restart did to it); then one of them is killed."""
    replicas.start(2)

    async def lose_the_bucket(nc: nats.NATS) -> None:
        await nc.jetstream().delete_key_value(subjects.lane_bucket(LANE))

    replicas.monitor.run(lose_the_bucket)
    replicas.wait_for(lambda owners: set(owners) == set(range(PARTITIONS)), "every lease taken again", timeout=20)
    survivor, victim = sorted(replicas.live_pids())
    replicas.kill(victim)
    started = time.monotonic()
    replicas.wait_for(
        lambda owners: set(owners) == set(range(PARTITIONS)) and replicas.owner_pids(owners) == {survivor},
        "the survivor owns every partition", timeout=20)
    took = time.monotonic() - started

    async def every_partition_answers(nc: nats.NATS) -> list[int]:
        lanes = await lane_client(nc)
        keys = {partition_of(f"k-{i}", PARTITIONS): f"k-{i}" for i in range(200)}
        return [(await lanes.call(keys[p], "append", {}, timeout=10))["position"] for p in range(PARTITIONS)]

    assert len(client.run(every_partition_answers)) == PARTITIONS
    assert took < 15, took


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a NATS matter
def test_a_lane_whose_stream_has_another_partition_count_refuses_to_start(replicas: Replicas) -> None:
    """Issue 14, R6: lowering a lane's partition count kept the stream's old subject transform, and the keys
    dealt to the partitions that no longer exist were never answered. Now the lane refuses to start, saying so."""
    fewer = dataclasses.replace(SPEC, partitions=PARTITIONS // 2)

    async def declared_with(spec: Any) -> str:
        async with await nats.connect(replicas.env["CARTWHEEL_NATS_URL"]) as nc:
            js = nc.jetstream()
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(subjects.lane_stream(LANE))
            await js.add_stream(stream_config(spec, 1))
            try:
                await check_partitions(js, SPEC)
                return ""
            except PartitionsChanged as refused:
                return str(refused)
            finally:
                await js.delete_stream(subjects.lane_stream(LANE))

    said = asyncio.run(declared_with(fewer))
    assert f"over {PARTITIONS // 2} partitions, this version over {PARTITIONS}" in said and "README" in said
    assert asyncio.run(declared_with(SPEC)) == ""  # the same count: nothing to say


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stream_that_lost_its_commands_stops_the_lane_loudly_until_rebased(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    """Issue 14, R4: a lane stream deleted (or its data lost) numbers new commands from 1, below the database's
    cursor, and they were skipped forever while every health check said ok. Now the partition stops, health
    says why, and `cartwheel lanes-rebase` lets it go on with what the stream holds."""
    replicas.start(1)

    async def before(nc: nats.NATS) -> None:
        lanes = await lane_client(nc)
        for _ in range(3):
            await lanes.call("k1", "append", {}, timeout=10)
        js = nc.jetstream()
        await js.delete_stream(subjects.lane_stream(LANE))
        await js.add_stream(stream_config(SPEC, 1))

    client.run(before)

    async def health(nc: nats.NATS) -> dict[str, Any]:
        return json.loads((await nc.request(subjects.health("inventory"), b"", timeout=5)).data)

    deadline, said = time.monotonic() + 20, {}
    while time.monotonic() < deadline and said.get("status") != "degraded":
        said = client.run(health)
        time.sleep(0.5)
    assert said.get("status") == "degraded", said
    assert any("before the cursor" in problem for problem in said["problems"]), said
    # ... and it keeps saying so while the partition stays stopped: it read "ok" again after this replica let
    # the partition go, until it took it and stopped it again.
    until = time.monotonic() + 2 * STREAM_CHECK_SECONDS + 2
    while time.monotonic() < until:
        assert client.run(health)["status"] == "degraded"
        time.sleep(0.5)
    settings = Settings(var_dir=replicas.var_dir, nats_url=replicas.env["CARTWHEEL_NATS_URL"],
                        inventory_database_url=database_url)
    assert rebase(settings, "inventory") == 0

    async def after(nc: nats.NATS) -> dict[str, Any]:
        return await (await lane_client(nc)).call("k1", "append", {}, timeout=30)

    assert client.run(after)["position"] == 4  # the key's state kept; the command applied, not skipped
    deadline = time.monotonic() + 3 * STREAM_CHECK_SECONDS  # "ok" once it has run past a stream check
    while (said := client.run(health))["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert said["status"] == "ok", said


def test_command_records_are_pruned_after_their_retention(replicas: Replicas, client: Client) -> None:
    replicas.env["CARTWHEEL_LANE_COMMAND_RETENTION_SECONDS"] = "1"  # pruned every second
    replicas.start(1)

    async def outcome(nc: nats.NATS, command_id: str) -> bool:
        answer = await nc.request(subjects.lane_outcome(LANE), json.dumps({"command_id": command_id}).encode(), 5)
        return json.loads(answer.data)["found"]

    async def scenario(nc: nats.NATS) -> None:
        lanes = await lane_client(nc)
        await lanes.call("k-prune", "append", {}, command_id="kept-a-moment")
        assert await outcome(nc, "kept-a-moment")
        deadline = time.monotonic() + 10
        while await outcome(nc, "kept-a-moment") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not await outcome(nc, "kept-a-moment")

    client.run(scenario)


def test_alarms_fire_through_the_lane_and_survive_a_restart(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    replicas.start(1)

    async def set_alarms(nc: nats.NATS) -> None:
        client = await lane_client(nc)
        await client.call("k2", "remind", {"alarm": "soon", "after": 2})
        await client.call("k2", "remind", {"alarm": "never", "after": 2})
        await client.call("k2", "forget", {"alarm": "never"})

    client.run(set_alarms)
    replicas.kill(replicas.live_pids().pop(), signal.SIGTERM)  # down before the alarm is due
    time.sleep(2.5)
    replicas.start(1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and ledger(database_url, "k2").fired != ["soon"]:
        time.sleep(0.2)
    assert ledger(database_url, "k2").fired == ["soon"]


def test_a_deleted_key_starts_over_and_its_row_is_gone(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    replicas.start(1)

    async def scenario(nc: nats.NATS) -> str:
        client = await lane_client(nc)
        await client.call("k3", "stock", {"stock": 2})
        await client.call("k3", "drop", {})
        with pytest.raises(DomainError) as refused:  # the owner's cached state went with the row
            await client.call("k3", "take", {})
        for kind, body in (("stock", {"stock": 7}), ("drop", {})):
            await client.call("k3", kind, body)
        await client.call("k4", "stock", {"stock": 1})
        return refused.value.code

    assert client.run(scenario) == "out_of_stock"
    db = Database(database_url)
    rows = db.read_sync(lambda s: load_states(s, LANE, ["k3", "k4"]))
    db.close()
    assert set(rows) == {"k4"}


def test_a_key_must_be_a_plain_token(replicas: Replicas, client: Client) -> None:
    replicas.start(1)

    async def scenario(nc: nats.NATS) -> None:
        client = await lane_client(nc)
        for key in ("a.b", "a b", "*", ">", ""):
            with pytest.raises(DomainError):
                await client.call(key, "append", {})

    client.run(scenario)


OUTAGE_S = 7.5


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # an outage: refuse its connections
def test_a_database_outage_delays_commands_but_loses_none(
    replicas: Replicas, database_url: str, client: Client, postgres_admin_url: str
) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database
    admin = make_url(postgres_admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    replicas.start(1)

    def outage(on: bool) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if on else "true"}')
            if on:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    lease_writes = 0

    async def scenario(nc: nats.NATS) -> None:
        nonlocal lease_writes
        lane = await lane_client(nc)
        await lane.call("k3", "stock", {"stock": 10})

        async def count(msg: nats.aio.msg.Msg) -> None:
            nonlocal lease_writes
            lease_writes += 1

        async def unanswered(i: int) -> None:  # stored in the stream, not applied: the caller hears nothing in time
            with pytest.raises(ServiceUnavailable):
                await lane.call("k3", "take", {}, command_id=f"during-outage-{i}", timeout=1.5)

        leases = await nc.subscribe(f"$KV.{subjects.lane_bucket(LANE)}.lease.>", cb=count)
        await asyncio.to_thread(outage, True)
        began = time.monotonic()
        try:
            await asyncio.gather(*(unanswered(i) for i in range(5)))
            # The outage lasts OUTAGE_S whatever the callers' timeouts (several lease TTLs: the partition is
            # tried again, and fails, a few times).
            await asyncio.sleep(max(0.0, began + OUTAGE_S - time.monotonic()))
        finally:
            await asyncio.to_thread(outage, False)
            await leases.unsubscribe()
        replies = await asyncio.gather(*(lane.call("k3", "take", {}, command_id=f"during-outage-{i}", timeout=20)
                                         for i in range(5)))  # the same ids again, at once
        assert sorted(r["left"] for r in replies) == [5, 6, 7, 8, 9]

    client.run(scenario)
    state = ledger(database_url, "k3")
    assert state.stock == 5 and len(state.applied) == len(set(state.applied)) == 6
    # A partition that cannot start is tried again after the lease TTL (2 s here), each try a take and a give-up:
    # not thousands of rounds a second, each hearing its own give-up and starting over (found in review).
    assert lease_writes <= PARTITIONS * 2 * (OUTAGE_S / 2 + 2), lease_writes


def test_inventory_sells_exactly_its_stock_while_its_hot_owner_is_killed(
    inventory_replicas: Replicas, database_url: str, client: Client
) -> None:
    """The issue's crash test, on the real inventory service: 3 replicas, SIGKILL the hot owner 3 times."""
    replicas, stock, product = inventory_replicas, 1500, "22222222-2222-2222-2222-222222222222"
    kills, lead, slack = 3, 50, 200
    replicas.start(3)
    outcome: dict[str, Any] = {"sold": set(), "kills_during_sale": 0, "unanswered": 0, "pause_at": lead + slack}

    async def scenario(nc: nats.NATS) -> None:
        lane = await LaneClient(nc, INVENTORY.name).start()
        await lane.call(product, "set_stock", {"product_id": product, "on_hand": stock}, timeout=20)
        done = asyncio.Event()

        async def buyer(n: int) -> None:
            i = 0
            while not done.is_set():
                # The sale outlasts the kills whatever the speed of a takeover and a replica's start: until the
                # last kill, the buyers wait for the killer once well past the point where it strikes next.
                while outcome["kills_during_sale"] < kills and len(outcome["sold"]) >= outcome["pause_at"]:
                    await asyncio.sleep(0.01)
                reservation = f"b{n}-{i}"
                body = {"product_id": product, "reservation_id": reservation, "order_id": reservation, "quantity": 1}
                for _ in range(10):  # the same command id every time: applied at most once
                    try:
                        await lane.call(product, "reserve", body, command_id=reservation, timeout=3)
                        outcome["sold"].add(reservation)
                        await asyncio.sleep(0.02)  # paced
                        break
                    except DomainError as refusal:
                        assert refusal.code == "out_of_stock", refusal.to_dict()
                        done.set()
                        break
                    except ServiceUnavailable:
                        continue
                else:
                    outcome["unanswered"] += 1
                i += 1

        async def killer() -> None:
            for _ in range(kills):
                # Ready to strike (the replaced replica started): strike once the buyers sold `lead` more, so the
                # hot owner dies under traffic, with `slack` more for the buyers before they wait for the kill.
                strike_at = len(outcome["sold"]) + lead
                outcome["pause_at"] = strike_at + slack
                while len(outcome["sold"]) < strike_at and not done.is_set():
                    await asyncio.sleep(0.01)
                victim = await asyncio.to_thread(replicas.owner_of, product)
                outcome["kills_during_sale"] += not done.is_set()
                await asyncio.to_thread(replicas.kill, victim)
                await asyncio.to_thread(replicas.start, 1)

        await asyncio.gather(killer(), *(buyer(n) for n in range(20)))

    client.run(scenario)
    db = Database(database_url)
    state = Stock.model_validate_json(db.read_sync(lambda s: load_states(s, INVENTORY.name, [product]))[product])
    db.close()
    assert outcome["kills_during_sale"] == kills and outcome["unanswered"] == 0, outcome
    assert len(outcome["sold"]) == stock == state.reserved == state.on_hand  # no oversell, nothing lost
    assert set(state.reservations) == outcome["sold"]  # every success is in the database, once


def test_many_keys_sent_at_once_apply_exactly_once_in_key_order_across_a_kill(
    replicas: Replicas, database_url: str, client: Client
) -> None:
    """Load spread over every partition, as an owner applies it in grouped transactions: one owner is
    SIGKILLed mid-way and replaced; every key's commands apply once each, in the order they were sent."""
    replicas.start(2)
    keys = [f"spread-{i}" for i in range(48)]
    assert {partition_of(k, PARTITIONS) for k in keys} == set(range(PARTITIONS))
    per_key = 12
    outcome: dict[str, Any] = {"answered": 0, "killed": False}

    async def scenario(nc: nats.NATS) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
        lane = await lane_client(nc)

        async def caller(key: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
            replies = []
            for i in range(per_key):
                while True:  # the same command id every time: applied at most once
                    try:
                        replies.append(await lane.call(key, "append", {}, command_id=f"{key}-{i}", timeout=3))
                        outcome["answered"] += 1
                        break
                    except ServiceUnavailable:
                        continue
            again = await lane.call(key, "append", {}, command_id=f"{key}-0", timeout=15)
            return key, replies, again

        async def killer() -> None:
            while outcome["answered"] < len(keys) * per_key // 3:
                await asyncio.sleep(0.005)
            victim = await asyncio.to_thread(replicas.owner_of, keys[0])
            await asyncio.to_thread(replicas.kill, victim)
            outcome["killed"] = outcome["answered"] < len(keys) * per_key
            await asyncio.to_thread(replicas.start, 1)

        *results, _ = await asyncio.gather(*(caller(k) for k in keys), killer())
        return {key: (replies, again) for key, replies, again in results}

    results = client.run(scenario)
    assert outcome["killed"], "the kill came after the last command: nothing was tested"
    for key, (replies, again) in results.items():
        state = ledger(database_url, key)
        assert [r["position"] for r in replies] == list(range(1, per_key + 1)), key  # each applied once, in order
        assert state.applied == [r["sequence"] for r in replies], key
        assert again == replies[0], key  # a retry long after gets the first reply, with no second effect


@pytest.mark.parametrize("through", ["session", "statements"])
def test_a_group_applies_partitions_together_and_leaves_out_a_fenced_one(database_url: str, through: str) -> None:
    """:func:`apply_group` directly: several partitions in one transaction, one of them moved meanwhile
    by a second owner (so left out, nothing written for it, alone as in a group), a command id met twice, alarms
    and a delete; through
    a session and through :meth:`Database.run_statements_sync` (on SQLite: the driver's own connection), alike."""
    from datetime import UTC, datetime, timedelta

    from cartwheel.db import migrate
    from cartwheel.lanes.models import LaneAlarm, LaneCommandRecord
    from cartwheel.lanes.store import Incoming, PartitionBatch, apply_batch, apply_group
    from cartwheel.lanes.types import LaneCommand
    from tests.lane_replica import SPEC

    migrate("inventory", database_url)
    db = Database(database_url)
    run = db.run_sync if through == "session" else db.run_statements_sync
    by_partition: dict[int, str] = {}
    for i in range(200):
        by_partition.setdefault(partition_of(f"g-{i}", PARTITIONS), f"g-{i}")
    a, b, c = (by_partition[p] for p in sorted(by_partition)[:3])
    pa, pb, pc = (partition_of(k, PARTITIONS) for k in (a, b, c))
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def cmd(key: str, seq: int, kind: str, body: dict[str, Any] | None = None, cid: str | None = None) -> Incoming:
        return Incoming(LaneCommand(id=cid or f"{key}-{seq}", key=key, kind=kind, body=body or {}, sequence=seq,
                                    issued_at=at + timedelta(seconds=seq)), reply_to=f"inbox.{key}.{seq}")

    first = run(lambda s: apply_group(s, SPEC, [
        PartitionBatch(pa, 0, [cmd(a, 1, "stock", {"stock": 5}), cmd(a, 2, "take"), cmd(a, 3, "remind",
                                                                                      {"alarm": "ga", "after": 60})]),
        PartitionBatch(pb, 0, [cmd(b, 1, "stock", {"stock": 1}), cmd(b, 2, "take"), cmd(b, 3, "take")]),
        PartitionBatch(pc, 0, [cmd(c, 1, "append"), cmd(c, 2, "drop")]),
    ]))
    assert [r.applied for r in first] == [True, True, True]
    assert [r.last_sequence for r in first] == [3, 3, 2]
    assert b'"left":4' in first[0].replies[1][1] and b"out_of_stock" in first[1].replies[2][1]
    assert first[0].alarms_changed and first[2].deleted == {c}

    # A second owner applies partition c (its cursor moves to 5) while the first still believes it at 2.
    assert db.run_sync(lambda s: apply_batch(s, SPEC, pc, 2, [cmd(c, 5, "append")])).applied
    second = run(lambda s: apply_group(s, SPEC, [
        PartitionBatch(pa, 3, [cmd(a, 4, "take"), cmd(a, 5, "forget", {"alarm": "ga"})], cached=first[0].states),
        PartitionBatch(pc, 2, [cmd(c, 3, "append", cid="stale-owner")], cached=first[2].states),
        # The same id as a's first take, on another partition: a duplicate, with that command's reply.
        PartitionBatch(pb, 3, [cmd(b, 4, "forget", {"alarm": "nothing-here"}), cmd(b, 5, "take", cid=f"{a}-4")],
                       cached=first[1].states),
    ]))
    assert [r.applied for r in second] == [True, False, True]
    assert second[1].last_sequence == 5 and not second[1].replies  # fenced: the caller restarts from the cursor
    assert second[2].duplicates == 1 and second[2].replies[1][1] == second[0].replies[0][1]
    # Alone, a partition's batch moves its cursor with one fenced UPDATE: a stale owner's changes no row, and
    # its batch is left out as in a group.
    lone = run(lambda s: apply_group(s, SPEC, [PartitionBatch(pc, 2, [cmd(c, 6, "append", cid="stale-lone")])]))
    assert not lone[0].applied and lone[0].last_sequence == 5 and not lone[0].replies

    stored = db.read_sync(lambda s: load_states(s, LANE, [a, b, c]))
    states = {k: Ledger.model_validate_json(v) for k, v in stored.items()}
    assert (states[a].stock, states[a].applied) == (3, [1, 2, 4])
    assert (states[b].stock, states[b].applied) == (0, [1, 2])  # its duplicate "take" had no effect
    assert states[c].applied == [5]  # the second owner's command only; the stale one left no trace

    def rows(s: Any) -> tuple[set[str], set[str]]:
        from sqlalchemy import select

        alarms = set(s.scalars(select(LaneAlarm.alarm_id).where(LaneAlarm.lane == LANE)))
        commands = set(s.scalars(select(LaneCommandRecord.command_id).where(LaneCommandRecord.lane == LANE)))
        return alarms, commands

    alarms, commands = db.read_sync(rows)
    db.close()
    assert alarms == set() and f"{b}-5" not in commands
    assert "stale-owner" not in commands and "stale-lone" not in commands
    assert sorted(db_cursor(database_url, p) for p in (pa, pb, pc)) == [5, 5, 5]


def db_cursor(database_url: str, partition: int) -> int:
    from cartwheel.lanes.store import cursor

    db = Database(database_url)
    try:
        return db.read_sync(lambda s: cursor(s, LANE, partition))
    finally:
        db.close()


def test_an_alarm_of_a_key_whose_state_does_not_read_fires_again_later_and_a_dead_lettered_one_is_cancelled(
    database_url: str,
) -> None:
    """Review of issue 14's change: answered state_unreadable or set aside, a firing left its alarm row due, so it
    was published again every 30 s (and looked for every 50 ms) for as long as its record was kept."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from cartwheel.lanes.models import LaneAlarm, LaneDeadLetter
    from cartwheel.lanes.store import Incoming, PartitionBatch, apply_group, dead_letter
    from cartwheel.lanes.types import ALARM, LaneCommand, fired_alarm_id

    migrate("inventory", database_url)
    db = Database(database_url)
    due = datetime(2026, 1, 1, tzinfo=UTC)
    broken, other = "a-broken", "a-other"
    db.run_sync(lambda s: s.add_all([
        LaneState(lane=LANE, key=broken, state='{"stock": "lots"}', updated_at=due),
        LaneAlarm(lane=LANE, alarm_id="al-1", partition=partition_of(broken, PARTITIONS), key=broken, due_at=due,
                  body='{"note": "x"}'),
        LaneAlarm(lane=LANE, alarm_id="al-2", partition=partition_of(other, PARTITIONS), key=other, due_at=due,
                  body="{}"),
    ]))

    def firing(key: str, alarm_id: str, seq: int) -> Incoming:
        body = {"alarm_id": alarm_id, "due_at": due.isoformat(), "body": {"note": "x"}}
        return Incoming(LaneCommand(id=fired_alarm_id(alarm_id, due), key=key, kind=ALARM, body=body, sequence=seq,
                                    issued_at=due), reply_to=None)

    try:
        (result,) = db.run_sync(lambda s: apply_group(s, SPEC, [
            PartitionBatch(partition_of(broken, PARTITIONS), 0, [firing(broken, "al-1", 1)])]))
        assert result.applied and result.earliest_alarm is not None
        later = db.read_sync(lambda s: s.scalar(select(LaneAlarm.due_at).where(LaneAlarm.alarm_id == "al-1")))
        assert later is not None and later > datetime.now(UTC) + timedelta(seconds=30)  # again in a minute
        gone = db.run_sync(lambda s: dead_letter(s, LANE, partition_of(other, PARTITIONS), 0,
                                                 firing(other, "al-2", 1), "ValueError('no')"))
        assert gone.applied
        assert db.read_sync(lambda s: s.scalar(select(LaneAlarm.alarm_id).where(LaneAlarm.alarm_id == "al-2"))) is None
        letter = db.read_sync(lambda s: s.scalars(select(LaneDeadLetter)).one())
        assert "alarm was cancelled" in letter.error
    finally:
        db.close()


def fresh_lane(nats_url: str, database_url: str, tmp_path: Path) -> Settings:
    """No stream or bucket of the ledger lane left by an earlier test, and the settings of a replica of it."""
    fresh_replicas(Replicas(nats_url, database_url, tmp_path)).monitor.close()
    migrate("inventory", database_url)
    return Settings(nats_url=nats_url, var_dir=tmp_path, inventory_database_url=database_url, metrics_port=0)


@contextlib.asynccontextmanager
async def lane_in_process(settings: Settings) -> Any:
    """The ledger lane in this process, on one replica that owns every partition and holds no round of its own
    meanwhile (its lease and tick a minute long)."""
    from cartwheel.lanes.runtime import LaneRuntime
    from cartwheel.service import Service

    service = Service("inventory", settings)
    runtime = LaneRuntime(service, SPEC, lease_ttl=60.0, tick=60.0)
    await service.app.start()
    try:
        assert runtime.ownership is not None and sorted(runtime.ownership.held) == list(range(PARTITIONS))
        yield runtime
    finally:
        await service.app.stop()


def test_starting_and_stopping_a_partition_are_serialised(nats_url: str, database_url: str, tmp_path: Path) -> None:
    """R5: a failed batch's restart, the ownership loop taking a partition and giving it up, interleaved, left a
    worker running without its lease, or two workers (two consumers) on one partition. Each start and stop of a
    partition's worker now waits for the one before: afterwards every lease has one worker and every worker a
    lease."""

    def workers_of(partition: int) -> int:
        return sum(1 for t in asyncio.all_tasks() if t.get_name() == f"lane-{LANE}-{partition}" and not t.done())

    settings = fresh_lane(nats_url, database_url, tmp_path)

    async def scenario() -> None:
        async with lane_in_process(settings) as runtime:
            # A batch failed on partition 0 (its restart) while the loop starts it again and lets it go again.
            failed = runtime.workers[0]
            await asyncio.gather(runtime.restart(failed), runtime._acquire(0), runtime._release(0),
                                 runtime._acquire(0))
            # The loop gives partition 1 up while a start of it is still connecting.
            runtime.ownership.held.pop(1)
            await asyncio.gather(runtime._acquire(1), runtime._release(1))
            await asyncio.sleep(0.5)
            assert set(runtime.workers) == set(runtime.ownership.held) == set(range(PARTITIONS)) - {1}
            assert [workers_of(p) for p in range(PARTITIONS)] == [0 if p == 1 else 1 for p in range(PARTITIONS)]

    asyncio.run(scenario())


def test_a_worker_that_falls_behind_holds_a_bounded_backlog(nats_url: str, database_url: str, tmp_path: Path) -> None:
    """Reasoned in issue 14: a worker took its partition's whole backlog into memory while its database was slow.
    Now it stops receiving at HIGH_WATER commands in hand (the rest waits in the stream) and takes up again where it
    left off, so all of it applies, once and in order, when the database answers."""
    from cartwheel.lanes.runtime import HIGH_WATER

    key, sent = "backlog", 8 * HIGH_WATER
    settings = fresh_lane(nats_url, database_url, tmp_path)

    async def scenario() -> None:
        async with lane_in_process(settings) as runtime:
            answered = asyncio.Event()
            apply = runtime.applier.apply

            async def slow(batch: Any) -> Any:  # the database, stuck until the backlog has piled up
                await answered.wait()
                return await apply(batch)

            runtime.applier.apply = slow  # type: ignore[method-assign]
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            for i in range(sent):
                await js.publish(subjects.lane_command(LANE, key), json.dumps({"kind": "append", "body": {}}).encode(),
                                 headers={"Nats-Msg-Id": f"backlog-{i}"})
            await nc.close()
            await asyncio.sleep(1.0)
            worker = runtime.workers[partition_of(key, PARTITIONS)]
            assert worker.queue.qsize() <= 2 * HIGH_WATER and worker.received < sent  # not all in memory
            assert worker._sub is None or worker._sub.pending_msgs == 0  # nor waiting in nats-py's queue
            answered.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and worker.cursor < sent:
                await asyncio.sleep(0.1)

    asyncio.run(scenario())
    applied = ledger(database_url, key).applied
    assert len(applied) == sent and applied == sorted(applied)


def _alarm_spec() -> Any:
    """The ledger lane, whose alarm handler sets its alarm again for the time it fired at."""
    from datetime import datetime

    from cartwheel.lanes import ALARM, Alarm, LaneSpec, Outcome
    from tests.lane_replica import handle

    def again(state: Ledger, command: Any) -> Outcome[Ledger]:
        if command.kind != ALARM:
            return handle(state, command)
        at = datetime.fromisoformat(command.body["due_at"])
        return Outcome(reply={}, state=Ledger(stock=state.stock, applied=state.applied,
                                              fired=[*state.fired, command.body["alarm_id"]]),
                       alarms=[Alarm(id=command.body["alarm_id"], at=at, body={})])

    return LaneSpec(name=LANE, state=Ledger, initial=lambda key: Ledger(), handle=again, partitions=PARTITIONS)


def test_an_alarm_fires_only_when_due_by_the_servers_clock_and_once_for_its_time(database_url: str) -> None:
    """Reasoned in issue 14: a replica whose clock runs fast fired alarms early (a reservation expired while its
    buyer paid), and an alarm set again, by its own firing or later, for the very time it fired at was never
    deleted (its next firing was a duplicate, answered from the record). Now a firing that reaches the stream
    before its due time is skipped and fires again; one set again for the time it fired at is dropped. And (found in
    review) an alarm moved by a command earlier in its firing's batch fired at its old time and lost the move."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from cartwheel.lanes.models import LaneAlarm, LaneCommandRecord
    from cartwheel.lanes.store import Incoming, PartitionBatch, apply_group
    from cartwheel.lanes.types import ALARM, LaneCommand, fired_alarm_id

    migrate("inventory", database_url)
    db = Database(database_url)
    spec = _alarm_spec()
    key, due = "alarm-key", datetime(2026, 1, 1, 12, tzinfo=UTC)
    partition = partition_of(key, PARTITIONS)
    db.run_sync(lambda s: s.add(LaneAlarm(lane=LANE, alarm_id="al", partition=partition, key=key, due_at=due,
                                          body="{}")))

    def firing(seq: int, stored_at: datetime, at: datetime = due) -> Incoming:
        body = {"alarm_id": "al", "due_at": at.isoformat(), "body": {}}
        return Incoming(LaneCommand(id=fired_alarm_id("al", at), key=key, kind=ALARM, body=body, sequence=seq,
                                    issued_at=stored_at), reply_to="inbox.al")

    def apply(expected: int, item: Incoming) -> Any:
        (result,) = db.run_sync(lambda s: apply_group(s, spec, [PartitionBatch(partition, expected, [item])]))
        assert result.applied
        return json.loads(result.replies[0][1])

    def alarm_row() -> Any:
        return db.read_sync(lambda s: s.scalar(select(LaneAlarm.due_at).where(LaneAlarm.alarm_id == "al")))

    def records() -> int:
        return len(db.read_sync(lambda s: s.scalars(select(LaneCommandRecord.command_id)).all()))

    try:
        early = apply(0, firing(1, due - timedelta(seconds=30)))  # by a clock 30 s fast
        assert early["data"] == {"skipped": "alarm is not due yet"}
        assert alarm_row() is not None and records() == 0 and ledger(database_url, key).fired == []
        assert apply(1, firing(2, due + timedelta(milliseconds=5)))["ok"]  # due now: it fires, once
        assert ledger(database_url, key).fired == ["al"]
        assert alarm_row() is None  # set again by its handler for the time it fired at: dropped
        # Set again for that time by a later command: its next firing is a duplicate, and deletes it.
        db.run_sync(lambda s: s.add(LaneAlarm(lane=LANE, alarm_id="al", partition=partition, key=key, due_at=due,
                                              body="{}")))
        apply(2, firing(3, due + timedelta(seconds=30)))
        assert alarm_row() is None and ledger(database_url, key).fired == ["al"]

        # Moved by a command earlier in the same batch as its firing: the firing is for a time it no longer has.
        hour = due + timedelta(hours=1)
        db.run_sync(lambda s: s.add(LaneAlarm(lane=LANE, alarm_id="al", partition=partition, key=key, due_at=hour,
                                              body="{}")))
        move = Incoming(LaneCommand(id="move-al", key=key, kind="remind", body={"alarm": "al", "after": 600},
                                    sequence=4, issued_at=hour), reply_to=None)
        (moved,) = db.run_sync(lambda s: apply_group(s, spec, [
            PartitionBatch(partition, 3, [move, firing(5, hour, at=hour)])]))
        assert json.loads(moved.replies[0][1])["data"] == {"skipped": "alarm was moved"}
        assert alarm_row() == hour + timedelta(seconds=600) and ledger(database_url, key).fired == ["al"]
    finally:
        db.close()
