"""The lanes runtime inside a service: owns partitions, applies their commands in order, fires alarms."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from datetime import datetime, timedelta
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig, SubjectTransform
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, StatementError

from cartwheel import subjects, tracing
from cartwheel.bus import ensure_stream, stream_led
from cartwheel.contracts.base import utcnow
from cartwheel.db import Database
from cartwheel.lanes import store
from cartwheel.lanes.client import answer_in_process
from cartwheel.lanes.models import LaneAlarm
from cartwheel.lanes.ownership import Ownership
from cartwheel.lanes.store import Incoming
from cartwheel.lanes.tenancy import (
    KILL_BETWEEN_TENANTS,
    fault,
    missing_database,
    split_by_tenant,
    tenant_of,
    unknown_tenant_reply,
)
from cartwheel.lanes.types import (
    ALARM,
    COMMAND_ID_MAX,
    KEY,
    KEY_MAX,
    STORED_ID,
    LaneCommand,
    LaneSpec,
    fired_alarm_id,
)
from cartwheel.service import Service
from cartwheel.statements import Statements
from cartwheel.tenants import context as tenant_context
from cartwheel.tenants.databases import UnknownTenant

log = logging.getLogger(__name__)

MAX_BATCH = 500
HIGH_WATER = 4 * MAX_BATCH  # commands received but not applied at which a worker stops receiving ...
LOW_WATER = MAX_BATCH  # ... until it has applied down to this many
CONSUMER_HEARTBEAT = 1.0
"""Seconds between the server's heartbeats to an idle partition's consumer. nats-py makes the consumer anew after two
missed ones; at its default of 5 s, a partition whose consumer lived on a lost nats-server stood still 10 s."""
DAY = 86400.0
STATES_KEPT = 10_000  # per partition: the hot keys' states stay parsed between batches
PURGE_EVERY = 10.0  # seconds between trimming applied commands off a partition
LOW_WATER_EVERY = 0.25
"""Seconds a partition's low-water mark may lag behind batches of other tenants' commands alone: their parts commit
in their own databases; the own database's cursor (and its notes of their alarms) follows at most this much later,
in one transaction for all the batches meanwhile, not one each. A crash in between costs only a re-read: each
tenant's cursor skips what it applied, and looks for alarms it set (see ``_apply_tenant``)."""
STREAM_CHECK_SECONDS = 5.0  # between checks that the stream still reaches the cursors
GATHER_PASSES = 3  # loop passes a grouped round lets pass while more partitions hand batches over


def stream_config(spec: LaneSpec[Any], replicas: int) -> StreamConfig:
    source, destination = subjects.lane_partition_transform(spec.name, spec.partitions)
    return StreamConfig(
        name=subjects.lane_stream(spec.name),
        description=f"commands of lane {spec.name}, {spec.partitions} partitions",
        subjects=[source],
        subject_transform=SubjectTransform(src=source, dest=destination),
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=7 * DAY,  # owners purge what they applied; this only bounds a lane nobody runs
        duplicate_window=120.0,
    )


class PartitionsChanged(RuntimeError):
    """The lane's stream maps keys onto another number of partitions than this version declares."""


async def check_partitions(js: Any, spec: LaneSpec[Any]) -> None:
    """Refuse to run a lane whose stream deals keys over another number of partitions: a key would move to
    another partition while its commands wait in the old one, and lose its order (or, with fewer partitions,
    never be answered). Changing the count is a migration (README, "Changing a lane's partitions")."""
    try:
        info = await stream_led(js, subjects.lane_stream(spec.name))
    except nats.js.errors.NotFoundError:
        return
    transform = info.config.subject_transform
    _, wanted = subjects.lane_partition_transform(spec.name, spec.partitions)
    if transform is not None and transform.dest != wanted:
        found = re.search(r"partition\((\d+)", transform.dest or "")
        raise PartitionsChanged(
            f"lane {spec.name}: its stream {info.config.name} deals keys over "
            f"{found.group(1) if found else 'another number of'} partitions, this version over {spec.partitions}; "
            "see README.md, \"Changing a lane's partitions\"")


class LaneMetrics:
    def __init__(self, service: Service, lane: str) -> None:
        labels = {"service": service.name, "lane": lane}
        reg = service.registry
        self.commands = Counter("cartwheel_lane_commands", "Commands applied", ["service", "lane"],
                                registry=reg).labels(**labels)
        self.duplicates = Counter("cartwheel_lane_duplicates", "Commands seen again (retries, redeliveries)",
                                  ["service", "lane"], registry=reg).labels(**labels)
        self.batch = Histogram("cartwheel_lane_batch_size", "Commands per transaction", ["service", "lane"],
                               buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=reg).labels(**labels)
        self.group = Histogram("cartwheel_lane_group_partitions", "Partitions per grouped transaction",
                               ["service", "lane"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=reg).labels(**labels)
        self.apply = Histogram("cartwheel_lane_apply_seconds", "Time to apply and commit one batch",
                               ["service", "lane"], registry=reg).labels(**labels)
        self.owned = Gauge("cartwheel_lane_partitions_owned", "Partitions this replica applies",
                           ["service", "lane"], registry=reg).labels(**labels)
        self.restarts = Counter("cartwheel_lane_partition_restarts", "Partitions re-read from their cursor",
                                ["service", "lane"], registry=reg).labels(**labels)
        self.behind = Gauge("cartwheel_lane_partitions_behind_stream",
                            "Partitions stopped because their stream ends before their cursor (lost commands)",
                            ["service", "lane"], registry=reg).labels(**labels)
        self.dead_letters = Counter("cartwheel_lane_dead_letters", "Commands set aside: the database would not "
                                    "take them", ["service", "lane"], registry=reg).labels(**labels)
        self.unknown_tenants = Counter("cartwheel_lane_unknown_tenant_commands", "Commands for a tenant without "
                                       "databases here: answered unknown_tenant, not applied", ["service", "lane"],
                                       registry=reg).labels(**labels)
        self.lag = Gauge("cartwheel_lane_lag_commands", "Commands of this replica's partitions not applied yet "
                         "(received, or waiting in the stream)", ["service", "lane"], registry=reg).labels(**labels)
        self.oldest = Gauge("cartwheel_lane_oldest_unapplied_seconds", "Age of the oldest command this replica "
                            "has received and not applied (0 when none)", ["service", "lane"],
                            registry=reg).labels(**labels)
        self.renewal_failures = Counter("cartwheel_lane_lease_renewal_failures", "Heartbeats and ownership rounds "
                                        "that failed (leases live only while both work)", ["service", "lane"],
                                        registry=reg).labels(**labels)
        self.renewal_age = Gauge("cartwheel_lane_lease_renewal_age_seconds", "Seconds since this replica's "
                                 "heartbeat and ownership round last both worked (stale past the lease time)",
                                 ["service", "lane"], registry=reg).labels(**labels)


def decode_envelope(data: bytes) -> tuple[str, dict[str, Any], str | None]:
    """``(kind, body, problem)`` of a command's bytes; ``problem`` says why the lane can't read it (else None)."""
    try:
        envelope = json.loads(data)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep to read
        return "", {}, f"not JSON ({str(exc)[:80]})"
    if not isinstance(envelope, dict):
        return "", {}, "not a JSON object"
    kind, body = envelope.get("kind", ""), envelope.get("body") or {}
    if not isinstance(kind, str) or not isinstance(body, dict):
        return "", {}, "kind must be a string and body an object"
    if kind == ALARM and not (isinstance(body.get("alarm_id"), str) and isinstance(body.get("due_at"), str)):
        return "", {}, "an alarm needs an alarm_id and a due_at"
    return kind, body, None


RESTART_FIRST = 0.1
RESTART_MAX = 10.0


def restart_delay(failures: int) -> float:
    """Seconds before a partition whose batch failed ``failures`` times in a row is read again: a database that
    is down is asked again soon, then less and less often, instead of a tight loop of restarts."""
    return min(RESTART_FIRST * 2 ** min(failures - 1, 16), RESTART_MAX)


def permanent(error: Exception) -> bool:
    """Whether the database refused this batch's content for good (a constraint, a value it can't store, a state
    that won't serialise): retrying the same commands would fail the same way. A database that is down, locked
    or out of step with the code (a missing table: an operator's matter) is worth waiting for instead."""
    if isinstance(error, (IntegrityError, DataError)):
        return True
    if isinstance(error, StatementError) and not isinstance(error, DBAPIError):
        return isinstance(error.orig, ValueError | TypeError)  # a value refused while bound to the statement
    if isinstance(error, DBAPIError | TimeoutError | ConnectionError | OSError):
        return False
    return isinstance(error, ValueError | TypeError)  # a value that won't serialise (a state, an event)


class CursorMoved(Exception):
    """Another replica applied this partition meanwhile (it believed it was the owner)."""


class StreamBehind(RuntimeError):
    """The lane's stream ends before the partition's cursor: it lost commands (deleted, or its data lost), and
    new ones would be numbered below the cursor and skipped. The partition stops until an operator rebases it."""

    expected = True  # a state the operator must fix, not a bug: said without a traceback, tried again seldom

    def __init__(self, lane: str, partition: int, cursor: int, last: int) -> None:
        super().__init__(f"lane {lane} partition {partition}: its stream ends at sequence {last}, before the cursor "
                         f"{cursor}; stopped, not skipping what comes. Run `cartwheel lanes-rebase` (README, Lanes)")
        self.partition, self.cursor, self.last = partition, cursor, last


class PartitionWorker:
    """Reads one partition in stream order from its database cursor and applies it batch by batch."""

    def __init__(self, runtime: LaneRuntime, partition: int) -> None:
        self.runtime = runtime
        self.partition = partition
        # A worker that falls behind stops receiving at HIGH_WATER and takes up again from the stream where it left
        # off: else it would take its whole backlog into memory (nats-py answers a callback's flow control at once,
        # so the server never waits, and a bounded queue would only move the backlog into nats-py's).
        self.queue: asyncio.Queue[Msg | None] = asyncio.Queue()  # None: stop after the batch in hand
        self.received = 0  # the stream sequence of the last command received
        self.last: Msg | None = None  # the last command received (how many more the stream holds: lag)
        self.applying: Msg | None = None  # the first command of the batch being applied (the oldest in hand)
        self.in_batch = 0  # the commands of that batch
        self._pausing: asyncio.Task[None] | None = None
        self._stopping = False
        self.cursor = 0
        """The own tenant's cursor, and the partition's low-water mark: every command up to it, of any tenant, is
        applied (its part of a batch commits last). Reading starts after it."""
        self.tenant_cursors: dict[str, int] = {}  # other tenants': as read from their databases, then committed
        self.stream_end = 0  # the stream's last sequence when this worker started
        # States as this owner committed them: the database is written, never read back, while
        # this worker owns the partition (like a Durable Object's memory). A new worker starts empty.
        self.states: OrderedDict[str, BaseModel] = OrderedDict()
        self.tenant_states: OrderedDict[tuple[str, str], BaseModel] = OrderedDict()  # other tenants': (tenant, key)
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_purge = time.monotonic() + PURGE_EVERY
        self.through = 0  # applied through here; the low-water mark (``cursor``) follows within LOW_WATER_EVERY
        self.started_at = time.monotonic()  # set again when it starts
        self.tenant_alarms: dict[str, datetime] = {}  # other tenants' alarms to note with the low-water mark
        self._low_water_at = 0.0  # monotonic time the low-water mark was last committed

    async def start(self) -> None:
        rt = self.runtime
        self.started_at = time.monotonic()
        self.cursor = await rt.service.db.own.read(lambda s: store.cursor(s, rt.spec.name, self.partition))
        last = self.stream_end = (await rt.service.js.stream_info(subjects.lane_stream(rt.spec.name))).state.last_seq
        if self.cursor > last:
            raise rt.stream_behind(self.partition, self.cursor, last)
        rt.behind.pop(self.partition, None)
        self.received = self.cursor
        await self._subscribe()
        self._task = asyncio.create_task(self._run(), name=f"lane-{rt.spec.name}-{self.partition}")

    async def _subscribe(self) -> None:
        """Receive the partition's commands from the one after the last received."""
        rt = self.runtime
        self._sub = await rt.service.js.subscribe(
            subjects.lane_partition(rt.spec.name, self.partition),
            stream=subjects.lane_stream(rt.spec.name),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.received + 1),
            cb=self._receive,
            pending_msgs_limit=-1,
            idle_heartbeat=CONSUMER_HEARTBEAT,
        )

    async def _receive(self, msg: Msg) -> None:
        self.received = msg.metadata.sequence.stream
        self.last = msg
        self.queue.put_nowait(msg)
        if self.queue.qsize() >= HIGH_WATER and self._pausing is None and self._sub is not None:
            self._pausing = asyncio.create_task(self._pause())

    def backlog(self) -> tuple[int, float]:
        """Commands not applied yet (in hand, and in the stream after the last received, as that one's delivery
        said: while receiving is paused, those that came since are not counted), and the age in seconds of the
        oldest in hand. Read at a scrape, never on the hot path."""
        in_hand = self.queue.qsize() + (self.in_batch if self.applying is not None else 0)
        in_stream = (self.last.metadata.num_pending or 0) if self.last is not None and not self._stopping else 0
        oldest = self.applying
        if oldest is None:
            with contextlib.suppress(IndexError):  # read from the scrape's thread: it may empty meanwhile
                oldest = self.queue._queue[0]  # type: ignore[attr-defined]  # asyncio.Queue has no peek
        age = (utcnow() - oldest.metadata.timestamp).total_seconds() if oldest is not None else 0.0
        return in_hand + in_stream, max(age, 0.0)

    async def _pause(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # gone with its connection: receiving stopped all the same
                await sub.unsubscribe()

    async def _resume(self) -> None:
        """Receive again once the backlog in hand is down to LOW_WATER (from the stream, where the rest waited)."""
        if self._pausing is None or self._stopping or self.queue.qsize() > LOW_WATER:
            return
        await self._pausing  # unsubscribed: nothing more is received, and ``received`` is the last in the queue
        self._pausing = None
        await self._subscribe()

    async def stop(self, grace: float) -> None:
        """Apply what has been received (replies go out) for up to ``grace`` s, then stop; the rest waits in the
        stream."""
        self._stopping = True
        if self._pausing is not None:
            with contextlib.suppress(Exception):
                await self._pausing
        if self._sub:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._task and not self._task.done():
            try:
                async with asyncio.timeout(grace):
                    self.queue.put_nowait(None)
                    await asyncio.shield(self._task)
            except TimeoutError:  # a transaction stuck on the database: the next owner's cursor check covers it
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _next(self) -> Msg | bool | None:
        """The next command in hand (None: stop). False: none came before the low-water mark was due."""
        if self.through <= self.cursor:
            return await self.queue.get()
        try:
            async with asyncio.timeout(max(0.0, self._low_water_at + LOW_WATER_EVERY - time.monotonic())):
                return await self.queue.get()
        except TimeoutError:
            return False

    async def _run(self) -> None:
        while (first := await self._next()) is not None:
            if first is False:
                if not await self._move_low_water():
                    return
                continue
            batch = [first]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                if (msg := self.queue.get_nowait()) is None:
                    self.queue.put_nowait(None)  # apply what came before the stop, then stop
                    break
                batch.append(msg)
            self.applying, self.in_batch = first, len(batch)
            try:
                try:
                    await self._apply(batch)
                except Exception as exc:
                    if isinstance(exc, CursorMoved) or not permanent(exc):
                        raise
                    # Something in the batch the database will never take: find it, set it aside, go on.
                    await self._apply_one_by_one(batch)
                self.runtime.failures.pop(self.partition, None)
                await self._resume()
            except Exception as exc:
                self._restart(exc)
                return
            finally:
                self.applying = None
        await self._move_low_water(stopping=True)

    async def _move_low_water(self, stopping: bool = False) -> bool:
        """Commit the low-water mark (and the tenants' alarm notes) the last batches left behind. False: it failed,
        and the worker restarts (unless stopping: the next owner reads from the cursor committed before)."""
        if self.through <= self.cursor:
            return True
        try:
            async with self.runtime.tenant_alarms_lock(self.partition):  # as the batches that set them
                await self._apply_own([], through=self.through)
        except Exception as exc:
            if not stopping:
                self._restart(exc)
            return False
        return True

    def _restart(self, exc: Exception) -> None:
        rt = self.runtime
        failures = rt.failures[self.partition] = rt.failures.get(self.partition, 0) + 1
        delay = 0.0 if isinstance(exc, CursorMoved) else restart_delay(failures)
        log.log(logging.WARNING if isinstance(exc, CursorMoved) else logging.ERROR,
                "lane %s partition %d: %s; re-reading from the cursor in %.1f s", rt.spec.name,
                self.partition, exc, delay, exc_info=not isinstance(exc, CursorMoved) and failures == 1)
        rt.metrics.restarts.inc()
        rt.background(rt.restart(self, delay))

    async def _apply(self, batch: list[Msg]) -> None:
        incoming = [item for item in map(self._decode, batch) if item.command.sequence > max(self.cursor, self.through)]
        if not incoming:
            return
        for item in incoming:
            if item.tenant is not None:
                await self._apply_tenants(incoming)
                return
        await self._apply_own(incoming)

    async def _apply_tenants(self, incoming: list[Incoming]) -> None:
        """A batch with other tenants' commands: each tenant's part commits in its own database with that
        tenant's cursor, the own tenant's last (moving the low-water mark past the whole batch). A crash between
        two commits leaves each database consistent: the next owner reads again from the low-water mark and
        skips, per tenant, what that tenant's cursor says is applied."""
        rt = self.runtime
        parts = split_by_tenant(incoming)
        own = parts.pop(None, [])
        refused: list[tuple[str, Incoming]] = []
        alarms = self.tenant_alarms
        async with rt.tenant_alarms_lock(self.partition):  # the alarm loop moves these notes too
            for tenant, items in parts.items():
                assert tenant is not None
                try:
                    db = await self._tenant_database(tenant)
                except UnknownTenant:
                    refused.extend((tenant, item) for item in items)
                    continue
                if (due_from := await self._apply_tenant(tenant, db, items)) is not None:
                    alarms[tenant] = min(due_from, alarms.get(tenant, due_from))
            self.through = incoming[-1].command.sequence
            soon = min(alarms.values(), default=None)
            if own or time.monotonic() >= self._low_water_at + LOW_WATER_EVERY or (
                    soon is not None and soon <= utcnow() + timedelta(seconds=LOW_WATER_EVERY)):
                await self._apply_own(own, through=self.through)
        for tenant, item in refused:
            log.error("lane %s partition %d: command %s (%s on %s, sequence %d) is for tenant %r, which has no "
                      "database here; answered unknown_tenant, not applied", rt.spec.name, self.partition,
                      item.command.id, item.command.kind, item.command.key, item.command.sequence, tenant)
            rt.metrics.unknown_tenants.inc()
            if item.reply_to:
                await self._reply([(item.reply_to, unknown_tenant_reply(tenant))])

    async def _tenant_database(self, tenant: str) -> Database:
        """``tenant``'s database, its cursor read the first time this worker meets it; :class:`UnknownTenant` if
        it has none (on PostgreSQL: its database does not exist)."""
        rt, lane = self.runtime, self.runtime.spec.name
        db = rt.service.db.of(tenant)
        if tenant not in self.tenant_cursors:
            try:
                cursor = await db.read(lambda s: store.cursor(s, lane, self.partition))
            except OperationalError as exc:
                if missing_database(exc):
                    raise UnknownTenant(f"no tenant {tenant!r} (its {rt.service.name} database does not exist)") \
                        from None
                raise
            if cursor > max(self.stream_end, self.received):  # the stream was made again: as for the own cursor
                raise rt.stream_behind(self.partition, cursor, self.stream_end)
            self.tenant_cursors[tenant] = cursor
        return db

    async def _apply_tenant(self, tenant: str, db: Database, items: list[Incoming]) -> datetime | None:
        """Apply ``tenant``'s part of a batch in its database, moving its cursor; what it says is applied is
        skipped (committed before a crash or a hand-over, the low-water mark not moved past it yet). Returns
        from when it may have alarms due that the own database has not noted (None: no alarm set)."""
        rt = self.runtime
        expected = self.tenant_cursors[tenant]
        # Applied before the low-water mark moved past it: whatever alarms it set were never noted. Look now.
        skipped = utcnow() if items[0].command.sequence <= expected else None
        items = [i for i in items if i.command.sequence > expected]
        if not items:
            return skipped
        started = time.perf_counter()
        cached = {i.command.key: self.tenant_states[(tenant, i.command.key)] for i in items
                  if (tenant, i.command.key) in self.tenant_states}
        relay = rt.service.outbox_relay(tenant)
        part = store.PartitionBatch(self.partition, expected, items, cached, tenant=tenant,
                                    published=relay.take_marks() if relay else ())

        def work(statements: Statements) -> list[store.BatchResult]:
            return store.apply_group(statements, rt.spec, [part])

        with tenant_context.serving(tenant):  # its outbox relay, its log lines
            try:
                # A tenant's part is a transaction of its own for a command or two: on a SQLite file, on the loop
                # through the driver (0.42 ms of CPU where SQLAlchemy's session took 1.13: bench/lane_parts.py). On
                # the writing threads a part waited on the GIL (1.8 ms of wall time each through the driver), and
                # add to cart with 100 busy tenants ran at 511 a second against 585 on the loop.
                result = (await db.run_statements(work))[0]
            except BaseException:
                if relay:
                    relay.give_back_marks(list(part.published))
                raise
            if not result.applied:
                raise CursorMoved(f"tenant {tenant}'s cursor moved to {result.last_sequence} elsewhere")
            self.tenant_cursors[tenant] = result.last_sequence
            fault(KILL_BETWEEN_TENANTS)  # tests only: committed here, not answered, not in the low-water mark
            self._remember_tenant(tenant, result.states, result.deleted)
            await self._answer(result, len(items), started)
        if skipped and result.earliest_alarm:
            return min(skipped, result.earliest_alarm)
        return skipped or result.earliest_alarm

    async def _apply_own(self, incoming: list[Incoming], through: int = 0) -> None:
        """Apply the own tenant's commands; the cursor moves at least to ``through`` (the low-water mark past other
        tenants' parts), with the notes of their alarms."""
        rt = self.runtime
        started = time.perf_counter()
        cached = {i.command.key: self.states[i.command.key] for i in incoming if i.command.key in self.states}
        relay = rt.service.outbox_relay(rt.service.db.own_name)
        noted = dict(self.tenant_alarms)
        batch_in_hand = store.PartitionBatch(self.partition, self.cursor, incoming, cached, through=through,
                                             tenant_alarms=noted, published=relay.take_marks() if relay else ())
        try:
            if tracing.enabled and (traced := [i.traceparent for i in incoming if i.traceparent]):
                # One span a batch (not a command: 12k commands/s), the child of its first traced command's and
                # linked to the others'.
                with tracing.span(f"{rt.spec.name} apply", parent=tracing.context_of(traced[0]),
                                  kind=tracing.CONSUMER, links=tracing.links_of(traced[1:]),
                                  attributes={"cartwheel.lane.partition": self.partition,
                                              "cartwheel.lane.commands": len(incoming)}):
                    result = await rt.applier.apply(batch_in_hand)
            else:
                result = await rt.applier.apply(batch_in_hand)
        except BaseException:
            if relay:
                relay.give_back_marks(list(batch_in_hand.published))
            raise
        if not result.applied:
            raise CursorMoved(f"cursor moved to {result.last_sequence} elsewhere")
        self.cursor = result.last_sequence
        if through or noted:
            self._low_water_at = time.monotonic()
            for tenant, at in noted.items():  # noted; a later note of the same tenant stays
                if self.tenant_alarms.get(tenant) == at:
                    del self.tenant_alarms[tenant]
            if noted and min(noted.values()) < rt.alarm_check_at:
                rt.alarms_changed.set()  # the alarm loop may have looked before these notes were there
        self._remember(result.states, result.deleted)
        if incoming:
            await self._answer(result, len(incoming), started)
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_EVERY
            await self._purge_applied()

    async def _answer(self, result: store.BatchResult, commands: int, started: float) -> None:
        """After a commit: metrics, replies, the outbox relay (the current tenant's), the alarm loop."""
        rt = self.runtime
        rt.metrics.apply.observe(time.perf_counter() - started)
        rt.metrics.batch.observe(commands)
        rt.metrics.commands.inc(commands - result.duplicates)
        rt.metrics.duplicates.inc(result.duplicates)
        await self._reply(result.replies)
        if result.events:
            rt.service.outbox_committed(result.events)
        if result.earliest_alarm and result.earliest_alarm < rt.alarm_check_at:
            rt.alarms_changed.set()  # due before the alarm loop's next look: look now

    async def _reply(self, replies: Iterable[tuple[str, bytes]]) -> None:
        """Answer the callers: by hand to one waiting in this process and loop (:func:`answer_in_process`: the
        cart's requests, applied by the cart's own lane), else over NATS to its inbox."""
        nc = self.runtime.service.broker.connection
        for reply_to, data in replies:
            if not answer_in_process(reply_to, data):
                await nc.publish(reply_to, data)

    async def _apply_one_by_one(self, batch: list[Msg]) -> None:
        """Apply ``batch`` a command at a time; one the database refuses for good becomes a dead letter."""
        for msg in batch:
            try:
                await self._apply([msg])
            except Exception as exc:
                if isinstance(exc, CursorMoved) or not permanent(exc):
                    raise
                await self._dead_letter(self._decode(msg), exc)

    async def _dead_letter(self, item: Incoming, error: Exception) -> None:
        rt, lane = self.runtime, self.runtime.spec.name
        if item.command.sequence <= self.cursor:
            return
        if item.tenant is not None:
            await self._dead_letter_of_tenant(item.tenant, item, error)
            return
        log.error("lane %s partition %d: command %s (%s on %s, sequence %d) set aside as a dead letter: %r",
                  lane, self.partition, item.command.id, item.command.kind, item.command.key, item.command.sequence,
                  error)
        expected = self.cursor
        result = await rt.service.db.own.run(
            lambda s: store.dead_letter(s, lane, self.partition, expected, item, repr(error)))
        if not result.applied:
            raise CursorMoved(f"cursor moved to {result.last_sequence} elsewhere")
        self.cursor = result.last_sequence
        self.states.pop(item.command.key, None)  # as the database has it, read again next time
        rt.metrics.dead_letters.inc()
        await self._reply(result.replies)

    async def _dead_letter_of_tenant(self, tenant: str, item: Incoming, error: Exception) -> None:
        """Another tenant's dead letter: in its database, past its cursor (the low-water mark follows with the
        next batch; until then a new owner skips the command by that cursor)."""
        rt, lane = self.runtime, self.runtime.spec.name
        db = rt.service.db.of(tenant)  # it opened for the batch that failed: a known tenant
        expected = self.tenant_cursors.get(tenant, 0)
        if item.command.sequence <= expected:
            return
        log.error("lane %s partition %d: command %s of tenant %s (%s on %s, sequence %d) set aside as a dead letter "
                  "in its database: %r", lane, self.partition, item.command.id, tenant, item.command.kind,
                  item.command.key, item.command.sequence, error)
        result = await db.run(lambda s: store.dead_letter(s, lane, self.partition, expected, item, repr(error)))
        if not result.applied:
            raise CursorMoved(f"tenant {tenant}'s cursor moved to {result.last_sequence} elsewhere")
        self.tenant_cursors[tenant] = result.last_sequence
        self.tenant_states.pop((tenant, item.command.key), None)
        rt.metrics.dead_letters.inc()
        await self._reply(result.replies)

    async def _purge_applied(self) -> None:
        """Drop what this partition applied from the stream; the database keeps the record of it."""
        lane = self.runtime.spec.name
        try:
            await self.runtime.service.js.purge_stream(
                subjects.lane_stream(lane), seq=self.cursor + 1, subject=subjects.lane_partition(lane, self.partition))
        except Exception as exc:
            log.warning("lane %s partition %d: purge failed (%s); retrying later", lane, self.partition, exc)

    def _remember(self, states: dict[str, BaseModel], deleted: set[str]) -> None:
        for key in deleted:
            self.states.pop(key, None)
        for key, state in states.items():
            self.states[key] = state
            self.states.move_to_end(key)
        while len(self.states) > STATES_KEPT:
            self.states.popitem(last=False)

    def _remember_tenant(self, tenant: str, states: dict[str, BaseModel], deleted: set[str]) -> None:
        for key in deleted:
            self.tenant_states.pop((tenant, key), None)
        for key, state in states.items():
            self.tenant_states[(tenant, key)] = state
            self.tenant_states.move_to_end((tenant, key))
        while len(self.tenant_states) > STATES_KEPT:
            self.tenant_states.popitem(last=False)

    def _decode(self, msg: Msg) -> Incoming:
        """The command as stored; one the lane can't read is marked ``malformed`` (answered so, never applied)."""
        meta = msg.metadata
        headers = msg.headers or {}
        sequence = meta.sequence.stream
        given = headers.get("Nats-Msg-Id") or ""
        kind, body, problem = decode_envelope(msg.data)
        key = msg.subject.split(".", 3)[3]
        if given and not STORED_ID.match(given):
            problem = problem or f"command id is not a plain token of 1 to {COMMAND_ID_MAX} characters"
        if not KEY.match(key):
            problem = problem or f"key is not a plain token of 1 to {KEY_MAX} characters"
        command = LaneCommand(
            # Without a usable id: one of its own, which a stream made again (its sequences from 1) can't repeat.
            id=given if STORED_ID.match(given) else f"seq-{sequence}-{int(meta.timestamp.timestamp() * 1000)}",
            key=key,
            kind=kind,
            body=body,
            sequence=sequence,
            issued_at=meta.timestamp,
        )
        return Incoming(command=command, reply_to=headers.get(subjects.LANE_REPLY_HEADER), malformed=problem,
                        traceparent=headers.get(tracing.TRACEPARENT),
                        tenant=tenant_of(headers, body, self.runtime.own_tenant))


class GroupApplier:
    """Applies the partitions' ready batches, many partitions to one transaction when ``grouped``.

    With the load spread over many keys, each partition's batch holds a command or two, and on its
    own pays a whole transaction and a statement per table for them (the profile of cart adds:
    59% of the process in that per-batch SQL). Workers hand their batches here instead; each round
    takes everything handed over and applies it with :func:`store.apply_group`: one transaction,
    one query and one write per table for all of them. A worker hands over its next batch only
    after the last one is answered, so a round holds at most one batch per partition and every
    partition still applies in stream order. A partition whose cursor moved is left out of the
    round (its worker restarts, as before); the others commit.

    Not ``grouped``: each batch is its own transaction, and on a database server they run side by
    side in the pool's threads.
    """

    def __init__(self, runtime: LaneRuntime, grouped: bool) -> None:
        self.runtime = runtime
        self.grouped = grouped
        self._pending: list[tuple[store.PartitionBatch, asyncio.Future[store.BatchResult]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.grouped:
            self._task = asyncio.create_task(self._run(), name=f"lane-{self.runtime.spec.name}-applier")

    async def stop(self) -> None:
        """After the workers stopped: nothing should be waiting, but nothing may be left waiting."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, done in self._pending:
            if not done.done():
                done.set_exception(RuntimeError("lane runtime stopped"))
        self._pending.clear()

    async def apply(self, batch: store.PartitionBatch) -> store.BatchResult:
        if not self.grouped:
            return (await self._transaction([batch]))[0]
        done: asyncio.Future[store.BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, done))
        self._ready.set()
        return await done

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            # Workers woken by the same burst of messages hand theirs over a pass or two of the
            # loop later: let them join this round. Never a timer: a round never waits for more.
            for _ in range(GATHER_PASSES):
                waiting = len(self._pending)
                await asyncio.sleep(0)
                if len(self._pending) == waiting:
                    break
            self._ready.clear()
            taken = [(b, done) for b, done in self._pending if not done.done()]  # done: its worker was cancelled
            self._pending = []
            if taken:
                await self._round(taken)

    async def _round(self, taken: list[tuple[store.PartitionBatch, asyncio.Future[store.BatchResult]]]) -> None:
        self.runtime.metrics.group.observe(len(taken))
        try:
            results = await self._transaction([b for b, _ in taken])
        except Exception as exc:
            if len(taken) == 1:
                _settle(taken[0][1], exc)
                return
            # One partition's batch may be what the database refuses: apply each on its own, so
            # only that partition stops and restarts, as it would without grouping.
            log.warning("lane %s: a group of %d partitions failed (%s); applying them one by one",
                        self.runtime.spec.name, len(taken), exc)
            for b, done in taken:
                try:
                    _settle(done, (await self._transaction([b]))[0])
                except Exception as alone:
                    _settle(done, alone)
            return
        for (_, done), result in zip(taken, results, strict=True):
            _settle(done, result)

    async def _transaction(self, batches: list[store.PartitionBatch]) -> list[store.BatchResult]:
        rt = self.runtime

        def work(statements: Statements) -> list[store.BatchResult]:
            return store.apply_group(statements, rt.spec, batches)

        # A SQLite batch is Python work on a local file: on this thread it skips the hand-off and the
        # fight for the GIL with the loop (measured 7.8k → 10.4k commands/s on one hot key). A network
        # database waits on round trips, which a worker thread spends without holding up the loop (and so
        # does a SQLite file another process holds locked: see Database.run_here).
        return await rt.service.db.own.run_statements(work)


def _settle(done: asyncio.Future[store.BatchResult], outcome: store.BatchResult | BaseException) -> None:
    if done.done():
        return  # its worker was cancelled meanwhile; the next owner's cursor check covers what committed
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


class LaneRuntime:
    """Runs ``spec``'s lane in ``service``: construct it before the service starts."""

    def __init__(self, service: Service, spec: LaneSpec[Any], *, lease_ttl: float = 3.0, tick: float = 1.0,
                 grouped: bool | None = None) -> None:
        """``grouped``: apply all owned partitions' ready batches in one transaction (see :class:`GroupApplier`).
        By default on SQLite only: it has one writer anyway, so grouping is pure gain (flash_sale
        lanes_spread 1.9k → 3.8k/s). On PostgreSQL grouping measured 5 to 15% faster on spread load but
        10 to 15% slower on one hot key (it gives up the partitions' parallel transactions), so each
        partition keeps its own there."""
        self.service = service
        self.spec = spec
        self.own_tenant = service.db.own_name
        self.metrics = LaneMetrics(service, spec.name)
        self.workers: dict[int, PartitionWorker] = {}
        self.failures: dict[int, int] = {}  # partition -> batches failed in a row (the restart's backoff)
        self.behind: dict[int, StreamBehind] = {}  # partitions stopped: their stream ends before their cursor
        self._elsewhere: dict[int, tuple[Any, float]] = {}  # a stopped partition's lease at another replica, since
        self.alarms_changed = asyncio.Event()
        self.alarm_check_at = utcnow()
        self.lease_ttl = lease_ttl
        self.tick = tick
        self.ownership: Ownership | None = None
        self.applier = GroupApplier(self, service.db.own.is_local if grouped is None else grouped)
        self._alarm_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._outcomes: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[int, asyncio.Lock] = {}
        self._alarm_locks: dict[int, asyncio.Lock] = {}
        service.on_start(self.start)
        service.on_stop(self.stop)
        service.readiness.checks.append(self._problems)
        self.metrics.lag.set_function(lambda: sum(w.backlog()[0] for w in list(self.workers.values())))
        self.metrics.oldest.set_function(lambda: max((w.backlog()[1] for w in list(self.workers.values())),
                                                     default=0.0))
        self.metrics.renewal_age.set_function(lambda: self.ownership.renewal_age if self.ownership else 0.0)

    def _problems(self) -> list[str]:
        """What keeps this replica's part of the lane from working: a partition stopped behind its stream; leases
        not renewed within their time (failover is dead though every partition looks owned)."""
        problems = [str(stopped) for stopped in self.behind.values()]
        if self.ownership and (age := self.ownership.renewal_age) > self.lease_ttl:
            problems.append(f"lane {self.spec.name}: its heartbeat or ownership round has not worked for "
                            f"{age:.0f} s (leases last {self.lease_ttl:g} s)")
        return problems

    async def start(self) -> None:
        js = self.service.js
        await check_partitions(js, self.spec)
        await ensure_stream(js, stream_config(self.spec, self.service.settings.stream_replicas))
        self.applier.start()
        nc = self.service.broker.connection
        self._outcomes = await nc.subscribe(subjects.lane_outcome(self.spec.name), queue=self.service.name,
                                            cb=self._answer_outcome)
        self.ownership = Ownership(js, self.spec.name, self.spec.partitions, self.service.instance,
                                   acquire=self._acquire, release=self._release, ttl=self.lease_ttl, tick=self.tick,
                                   replicas=self.service.settings.stream_replicas,
                                   on_failure=self.metrics.renewal_failures.inc)
        await self.ownership.start()
        self._alarm_task = asyncio.create_task(self._fire_alarms(), name=f"lane-{self.spec.name}-alarms")
        self._watch_task = asyncio.create_task(self._watch_stream(), name=f"lane-{self.spec.name}-stream")
        self._prune_task = asyncio.create_task(self._prune_records(), name=f"lane-{self.spec.name}-prune")

    async def stop(self) -> None:
        for task in (self._alarm_task, self._prune_task, self._watch_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.ownership:
            await self.ownership.stop()  # the workers apply what they hold, through the applier
        await self.applier.stop()
        if self._outcomes:
            with contextlib.suppress(Exception):
                await self._outcomes.unsubscribe()

    @property
    def owned(self) -> list[int]:
        return sorted(self.workers)

    def _lock(self, partition: int) -> asyncio.Lock:
        """Starting and stopping a partition's worker, one at a time: the ownership loop, a worker's restart and
        the stream check each start or stop one, and interleaved (a start still connecting while the lease is
        given up) they left a worker running without its lease, or two on one partition."""
        return self._locks.setdefault(partition, asyncio.Lock())

    def tenant_alarms_lock(self, partition: int) -> asyncio.Lock:
        """A partition's notes of other tenants' alarms: a batch noting one and the alarm loop moving it after a
        look in that tenant's database, one at a time (else the loop could drop a note made meanwhile)."""
        return self._alarm_locks.setdefault(partition, asyncio.Lock())

    async def _acquire(self, partition: int) -> None:
        async with self._lock(partition):
            if partition not in self.workers:
                await self._start_worker(partition)

    async def _release(self, partition: int) -> None:
        async with self._lock(partition):
            await self._stop_worker(partition)

    async def _start_worker(self, partition: int) -> None:
        worker = PartitionWorker(self, partition)
        await worker.start()
        self.workers[partition] = worker
        self.metrics.owned.set(len(self.workers))
        self.alarms_changed.set()
        log.info("lane %s: applying partition %d from sequence %d", self.spec.name, partition, worker.cursor + 1)

    async def _stop_worker(self, partition: int) -> None:
        worker = self.workers.pop(partition, None)
        if worker:
            # Within a lease round: half the lease, so handing partitions over never holds the round up for long.
            await worker.stop(grace=self.lease_ttl / 2)
            log.info("lane %s: handed partition %d over", self.spec.name, partition)
        self.metrics.owned.set(len(self.workers))

    async def restart(self, failed: PartitionWorker, delay: float = 0.0) -> None:
        """Re-read a partition from its database cursor after ``failed`` stopped on a batch (a database error, a
        moved cursor), ``delay`` s on.

        Nothing is done if ``failed`` is no longer the partition's worker (let go, or already replaced). If the
        new worker cannot start (the database is down), the lease goes back, and the ownership loop tries again
        next tick: the partition is never left held but unworked.
        """
        partition = failed.partition
        async with self._lock(partition):
            if self.workers.get(partition) is not failed:
                return
            await self._stop_worker(partition)
        await asyncio.sleep(delay)
        async with self._lock(partition):
            if partition in self.workers or not self.ownership or partition not in self.ownership.held:
                return  # taken again meanwhile (that worker is the one), or no longer this replica's
            try:
                await self._start_worker(partition)
                return
            except Exception as exc:
                expected = getattr(exc, "expected", False)  # said plainly, as the ownership loop says it
                log.error("lane %s: partition %d could not restart (%s); handing it back", self.spec.name, partition,
                          exc if expected else repr(exc), exc_info=not expected)
        await self.ownership.give_up(partition)

    def stream_behind(self, partition: int, cursor: int, last: int) -> StreamBehind:
        stopped = self.behind[partition] = StreamBehind(self.spec.name, partition, cursor, last)
        self.metrics.behind.set(len(self.behind))
        return stopped

    def _forget_resolved(self) -> None:
        """Stop saying a partition is stopped once it runs: here, past a stream check; or at another replica that
        has held it for two checks (one that found it behind too would have let it go within one, and says so
        itself). Until then it is said, also while no replica holds it: every one that takes it stops it again,
        and health read "ok" between two of them."""
        now = time.monotonic()
        for partition in list(self.behind):
            worker = self.workers.get(partition)
            if worker is not None and now - worker.started_at >= STREAM_CHECK_SECONDS:
                del self.behind[partition]
                continue
            lease = self.ownership.held_elsewhere(partition) if self.ownership else None
            if lease is None or worker is not None:
                self._elsewhere.pop(partition, None)
                continue
            since = self._elsewhere.get(partition)
            if since is None or since[0] != lease:
                self._elsewhere[partition] = (lease, now)
            elif now - since[1] >= 2 * STREAM_CHECK_SECONDS:
                del self.behind[partition]
                del self._elsewhere[partition]
        self.metrics.behind.set(len(self.behind))

    async def _watch_stream(self) -> None:
        """Every few seconds: does the stream still reach each worked partition's cursor? A stream deleted or
        emptied under a running lane numbers new commands from 1, below the cursors: stop those partitions
        (loudly: log, metric, health) rather than skip what comes; a partition that starts checks the same."""
        js = self.service.js
        while True:
            await asyncio.sleep(STREAM_CHECK_SECONDS)
            self._forget_resolved()
            cursors = {partition: worker.cursor for partition, worker in self.workers.items()}  # before the end
            try:
                last = (await js.stream_info(subjects.lane_stream(self.spec.name))).state.last_seq
            except nats.js.errors.NotFoundError:  # deleted: made again (empty), so what comes is kept, and checked
                log.error("lane %s: its stream is gone; making it again", self.spec.name)
                await ensure_stream(js, stream_config(self.spec, self.service.settings.stream_replicas))
                last = 0
            except Exception as exc:
                log.warning("lane %s: could not read its stream's state (%s)", self.spec.name, exc)
                continue
            for partition, cursor in cursors.items():
                if cursor > last and partition in self.workers:
                    log.error("%s", self.stream_behind(partition, cursor, last))
                    await self._release(partition)
                    if self.ownership and partition in self.ownership.held:
                        await self.ownership.give_up(partition)  # taken again, and checked again, next round
            self.metrics.behind.set(len(self.behind))

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_outcome(self, msg: Msg) -> None:
        try:
            asked = json.loads(msg.data)
            command_id, tenant = str(asked["command_id"]), asked.get("tenant")
        except (ValueError, KeyError, TypeError, AttributeError):
            await msg.respond(b'{"found": false, "reply": null}')
            return
        try:
            db = self.service.db.of(tenant if isinstance(tenant, str) else self.own_tenant)
            reply = await db.read(lambda s: store.recorded_reply(s, self.spec.name, command_id))
        except (UnknownTenant, OperationalError) as exc:
            if isinstance(exc, OperationalError) and not missing_database(exc):
                raise
            await msg.respond(b'{"found": true, "reply": ' + unknown_tenant_reply(str(tenant)) + b"}")
            return  # every command of a tenant without databases was answered so
        await msg.respond(b'{"found": true, "reply": ' + reply.encode() + b"}" if reply else
                          b'{"found": false, "reply": null}')

    async def _prune_records(self) -> None:
        """Forget applied command ids older than the retention setting, or the table grows with every command.

        A retry or an outcome query comes within seconds of its command (the callers' timeouts), so a
        week's records answer every one; the owner of partition 0 does it for the whole lane.
        """
        retention = self.service.settings.lane_command_retention_seconds
        every = min(3600.0, max(1.0, retention / 10))
        while True:
            await asyncio.sleep(every)
            if 0 not in self.workers:
                continue
            before = utcnow() - timedelta(seconds=retention)
            for tenant, db in self.service.db.all_open():  # a tenant's database closed now is pruned once it opens
                try:
                    await db.run(functools.partial(store.prune_commands, lane=self.spec.name, before=before))
                except Exception as exc:
                    log.warning("lane %s: pruning tenant %s's command records failed (%s); trying again later",
                                self.spec.name, tenant, exc)

    async def _fire_alarms(self) -> None:
        """Publish due alarms of owned partitions as commands on their keys' lanes."""
        sent: dict[str, float] = {}
        while True:
            try:
                wait = await self._fire_due(sent)
            except Exception:
                log.exception("lane %s: firing alarms failed", self.spec.name)
                wait = 1.0
            self.alarms_changed.clear()
            self.alarm_check_at = utcnow() + timedelta(seconds=wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.alarms_changed.wait()

    async def _fire_due(self, sent: dict[str, float]) -> float:
        partitions = self.owned
        if not partitions:
            return 1.0
        now = utcnow()
        own, lane = self.service.db.own, self.spec.name
        due = await own.read(lambda s: store.due_alarms(s, lane, partitions, now))
        clock = time.monotonic()
        for alarm in due:
            await self._fire(alarm, None, sent, clock)
        for partition, tenant in await own.read(lambda s: store.tenants_with_alarms(s, lane, partitions, now)):
            await self._fire_tenants_due(partition, tenant, now, sent, clock)
        for key in [k for k, until in sent.items() if until < clock]:
            del sent[key]
        upcoming = await own.read(lambda s: store.next_alarm_at(s, lane, partitions))
        theirs = await own.read(lambda s: store.next_tenant_alarm_at(s, lane, partitions))
        upcoming = min(upcoming, theirs) if upcoming and theirs else upcoming or theirs
        if upcoming is None:
            return 5.0
        wait = (upcoming - utcnow()).total_seconds()
        if wait <= 0:  # due, and published: on its way through the lane (or skipped as early): not every 50 ms
            wait = 1.0
        return max(0.05, min(5.0, wait))

    async def _fire(self, alarm: LaneAlarm, tenant: str | None, sent: dict[str, float], clock: float) -> None:
        """Publish ``alarm``'s firing as a command on its key, for ``tenant`` (None: the own tenant)."""
        fired_id = fired_alarm_id(alarm.alarm_id, alarm.due_at)
        if sent.get(f"{tenant}/{fired_id}" if tenant else fired_id, 0) > clock:
            return  # published moments ago; it is on its way through the lane
        body = {"alarm_id": alarm.alarm_id, "due_at": alarm.due_at.isoformat(), "body": json.loads(alarm.body)}
        headers = {"Nats-Msg-Id": fired_id}
        if tenant is not None:
            headers[subjects.LANE_TENANT_HEADER] = tenant
        await self.service.js.publish(subjects.lane_command(self.spec.name, alarm.key),
                                      json.dumps({"kind": ALARM, "body": body}).encode(), headers=headers, timeout=5)
        sent[f"{tenant}/{fired_id}" if tenant else fired_id] = clock + 30  # again after 30 s if pending (deduped)

    async def _fire_tenants_due(self, partition: int, tenant: str, now: datetime, sent: dict[str, float],
                                clock: float) -> None:
        """Fire another tenant's due alarms of ``partition`` (the own database noted it has some), then note when
        its next one is due (or that it has none left)."""
        lane, own = self.spec.name, self.service.db.own
        async with self.tenant_alarms_lock(partition):
            if partition not in self.workers:
                return
            try:
                db = self.service.db.of(tenant)
                due = await db.read(lambda s: store.due_alarms(s, lane, [partition], now))
                upcoming = await db.read(lambda s: store.next_alarm_at(s, lane, [partition]))
            except (UnknownTenant, OperationalError) as exc:
                if isinstance(exc, OperationalError) and not missing_database(exc):
                    raise
                due, upcoming = [], None  # deleted: its alarms went with its databases
            for alarm in due:
                await self._fire(alarm, tenant, sent, clock)
            await own.run(lambda s: store.set_tenant_alarms(s, lane, partition, tenant, upcoming))

