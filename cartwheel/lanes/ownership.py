"""Which replica applies which partition: heartbeats and leases in a KV bucket.

Every replica writes ``member.<id>`` each tick (its heartbeat, a message that expires after
``ttl``) and hears everything written to the bucket through one watcher: a member is live while
its heartbeat was heard within ``ttl``. Partitions are dealt round-robin over the sorted live
members, so they spread evenly and every replica computes the same answer.

A replica works a partition only while it holds ``lease.<n>``, whose value names the holder. A
lease is not renewed: it stays its holder's while the holder's heartbeat lives. A partition dealt
to a replica is taken by creating its lease when there is none, or by compare-and-set from the
revision a dead member (no heartbeat for ``ttl``) left. A leaving replica deletes its leases and
its heartbeat at once, and the others hear it and take over without waiting for their tick. A
holder that hears its lease written by another (it was paused, and counted dead meanwhile) lets
the partition go. The database cursor, not the lease, is what makes a double owner harmless
(see :func:`cartwheel.lanes.store.apply_batch`).

The watcher must be current for any of this: a replica takes a lease from a "dead" holder only
while it hears its own heartbeat, and after watching again (a deaf watcher, a bucket lost and made
again) it lets go of every partition whose lease the bucket no longer shows as its own.

An idle replica costs one heartbeat a tick (a third of ``ttl``) and the heartbeats it hears;
nothing grows with the partitions it holds, and nothing lists the bucket (which would create a
consumer every round).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cartwheel import subjects
from cartwheel.bus import ensure_bucket
from cartwheel.observability import Trouble

log = logging.getLogger(__name__)

Hook = Callable[[int], Awaitable[None]]
MEMBER, LEASE = "member.", "lease."
def bucket_gone(error: BaseException) -> bool:
    """What writing to or watching a bucket raises once its stream is gone (not a missing key)."""
    return isinstance(error, nats.js.errors.NoStreamResponseError | nats.js.errors.NotFoundError) and \
        not isinstance(error, nats.js.errors.KeyNotFoundError)
UNANSWERED = (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError)  # it may have been written anyway


def assignment(members: list[str], partitions: int) -> dict[int, str]:
    """Partition → member, dealt round-robin over the sorted members (even to within one)."""
    ordered = sorted(members)
    return {p: ordered[p % len(ordered)] for p in range(partitions)} if ordered else {}


class Lease(NamedTuple):
    holder: str  # "" once deleted: free to take
    revision: int


class Ownership:
    def __init__(self, js: JetStreamContext, lane: str, partitions: int, member: str, *, acquire: Hook,
                 release: Hook, ttl: float = 3.0, tick: float = 1.0, replicas: int = 1,
                 on_failure: Callable[[], None] = lambda: None) -> None:
        self.js = js
        self.lane = lane
        self.partitions = partitions
        self.member = member
        self._acquire = acquire
        self._release = release
        self.ttl = max(1.0, ttl)  # a message's TTL is whole seconds
        self.tick = tick
        self.replicas = replicas
        self.held: dict[int, int] = {}  # partition → revision of this replica's lease
        self.kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None
        self._stopping = False
        self._retry_at: dict[int, float] = {}  # partition → when to try again after it failed to start
        self._heard: dict[str, float] = {}  # member → when its heartbeat was last heard (monotonic)
        self._leases: dict[int, Lease] = {}  # what the bucket says, as heard
        self._caught_up = asyncio.Event()  # the watcher has told what the bucket held when it started
        self._changed = asyncio.Event()  # a member joined or left, a lease moved: deal again now
        self._watcher: KeyValue.KeyWatcher | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening_since = 0.0
        self._bucket_lost = False
        # Renewal: the heartbeat that keeps this replica's leases, and the round that deals partitions. Both must
        # work for failover to work; the service is not ready when either has not for ``ttl`` (renewal_age). A
        # round that is still going counts as working: handing partitions over may take seconds.
        self._beat_at = time.monotonic()
        self._round_failing_since: float | None = None
        self._on_failure = on_failure  # a heartbeat or round that failed (the lane's metric)
        self._beat_trouble = Trouble(log, f"lane {lane}: heartbeat")
        self._round_trouble = Trouble(log, f"lane {lane}: ownership round")

    @property
    def renewal_age(self) -> float:
        """Seconds since this replica's heartbeat last went out, or since its ownership rounds began to fail,
        whichever is longer."""
        now = time.monotonic()
        failing = now - self._round_failing_since if self._round_failing_since is not None else 0.0
        return max(now - self._beat_at, failing)

    @property
    def bucket(self) -> str:
        return subjects.lane_bucket(self.lane)

    async def start(self) -> None:
        await self._open_bucket()
        await self._heartbeat()
        await self._listen()
        await self._round()
        self._beating = asyncio.create_task(self._beat(), name=f"lane-{self.lane}-heartbeat")
        self._task = asyncio.create_task(self._run(), name=f"lane-{self.lane}-ownership")

    async def _open_bucket(self) -> None:
        """The lease bucket, made where missing: on file, so a restarted nats-server still has it (in memory it
        was lost with every restart, and nothing made it again: failover stopped)."""
        config = KeyValueConfig(bucket=self.bucket, history=1, storage=StorageType.FILE, replicas=self.replicas,
                                description=f"replicas and partition leases of lane {self.lane}")
        await ensure_bucket(self.js, config)
        stream = f"KV_{self.bucket}"
        if (await self.js.stream_info(stream)).config.storage != StorageType.FILE:  # made by an older version
            log.info("lane %s: bucket %s moves from memory to file (its leases are taken again)", self.lane,
                     self.bucket)
            with contextlib.suppress(nats.js.errors.NotFoundError):  # another replica moved it first
                await self.js.delete_stream(stream)
            await ensure_bucket(self.js, config)
        await self._no_bucket_age()
        self.kv = await self.js.key_value(self.bucket)

    async def _recover_bucket(self) -> None:
        """The bucket is gone (a nats-server that lost it, an operator): make it again and watch it again, which
        lets go of every partition whose lease it no longer shows (all of them), to be taken again."""
        log.warning("lane %s: bucket %s is gone; making it again", self.lane, self.bucket)
        self._bucket_lost = False
        for partition in list(self.held):  # no lease of this replica's is in a new bucket (and revisions restart)
            await self._lost(partition, "nobody: its bucket was lost")
        await self._open_bucket()
        await self._heartbeat()
        await self._listen()

    async def _no_bucket_age(self) -> None:
        """A bucket made before leases lived as long as their holder expired every entry after ``ttl``: leases
        would vanish under their holders now that they are not renewed."""
        stream = f"KV_{self.bucket}"
        config = (await self.js.stream_info(stream)).config
        if config.max_age or not config.allow_msg_ttl:
            config.max_age, config.allow_msg_ttl = 0, True
            await self.js.update_stream(config)
            log.info("lane %s: bucket %s keeps leases until their holders go", self.lane, self.bucket)

    async def stop(self) -> None:
        """Hand every partition back, then leave: the other replicas take over as soon as they hear it."""
        self._stopping = True
        for task in (self._task, self._beating):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for partition in list(self.held):
            await self.give_up(partition)
        if self.kv:
            with contextlib.suppress(Exception):
                await self.kv.purge(f"{MEMBER}{self.member}", msg_ttl=math.ceil(self.ttl))  # and no tombstone left
        await self._stop_listening()

    async def _heartbeat(self) -> None:
        await self.js.publish(f"$KV.{self.bucket}.{MEMBER}{self.member}", b"", msg_ttl=math.ceil(self.ttl))

    async def _beat(self) -> None:
        """The heartbeat, on its own: a round that stops workers may take seconds, and must not look like death."""
        while not self._stopping:
            await asyncio.sleep(self.tick)
            try:
                await self._heartbeat()
            except Exception as exc:
                self._on_failure()
                self._beat_trouble.failed(exc)
                if bucket_gone(exc):
                    self._bucket_lost = True
                    self._changed.set()
            else:
                self._beat_at = time.monotonic()
                self._beat_trouble.ok()

    async def _run(self) -> None:
        waiting = False  # wanted partitions are still held by others: look again soon, they are being let go
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick / 4 if waiting else self.tick):
                    await self._changed.wait()
            self._changed.clear()
            try:
                if self._bucket_lost:
                    await self._recover_bucket()
                waiting = await self._round()
            except Exception as exc:
                self._on_failure()
                if self._round_failing_since is None:
                    self._round_failing_since = time.monotonic()
                if bucket_gone(exc):
                    self._bucket_lost = True
                    self._round_trouble.failed(f"bucket {self.bucket} is gone ({exc!r})")
                else:
                    self._round_trouble.failed(exc, traceback=True, level=logging.ERROR)
            else:
                self._round_failing_since = None
                self._round_trouble.ok()

    async def _round(self) -> bool:
        """Take or give up partitions; True while a wanted one is still held by another."""
        assert self.kv is not None
        if time.monotonic() - max(self._heard.get(self.member, 0.0), self._listening_since) > self.ttl:
            log.warning("lane %s: heard no heartbeat, not even its own, for %.0f s; watching again", self.lane,
                        self.ttl)
            await self._listen()
        for partition, revision in list(self.held.items()):
            lease = self._leases.get(partition)
            if lease is not None and lease.holder != self.member and lease.revision > revision:
                await self._lost(partition, lease.holder or "another replica, and let go since")
        wanted = self._wanted()
        for partition in sorted(set(self.held) - wanted):
            await self.give_up(partition)
        for partition, lease in sorted(self._leases.items()):  # its own, though it does not know it holds them:
            if lease.holder == self.member and partition not in self.held and partition not in wanted:
                with contextlib.suppress(Exception):  # an answer lost, a delete that failed
                    await self.kv.delete(f"{LEASE}{partition}", last=lease.revision)
        now = time.monotonic()
        due = {p for p in wanted - set(self.held) if self._retry_at.get(p, 0.0) <= now}
        for partition in sorted(due):
            await self._try_take(partition)
        return bool(due - set(self.held))

    def held_elsewhere(self, partition: int) -> Lease | None:
        """The lease of ``partition`` when a live replica other than this one holds it (None otherwise)."""
        lease = self._leases.get(partition)
        if lease is None or not lease.holder or lease.holder == self.member or lease.holder not in self._live():
            return None
        return lease

    def _wanted(self) -> set[int]:
        return {p for p, m in assignment(sorted(self._live()), self.partitions).items() if m == self.member}

    async def _lost(self, partition: int, to: str) -> None:
        log.warning("lane %s: partition %d was taken by %s; stopping it", self.lane, partition, to)
        del self.held[partition]
        await self._release(partition)

    def _live(self) -> set[str]:
        """The members heard within ``ttl``, this one always among them."""
        now = time.monotonic()
        return {m for m, at in self._heard.items() if now - at < self.ttl} | {self.member}

    async def _listen(self) -> None:
        """(Re)start the watcher that hears every heartbeat, departure and lease."""
        assert self.kv is not None
        await self._stop_listening()
        self._heard.clear()
        self._leases.clear()
        self._caught_up.clear()
        self._listening_since = time.monotonic()
        self._watcher = await self.kv.watchall()
        self._listener = asyncio.create_task(self._hear(self._watcher), name=f"lane-{self.lane}-members")
        with contextlib.suppress(TimeoutError):  # else a replica would think itself alone and take every lease
            async with asyncio.timeout(self.ttl):
                await self._caught_up.wait()
        if not self._caught_up.is_set():
            return
        for partition, revision in list(self.held.items()):  # the bucket may have been lost and made again
            if self._leases.get(partition) != Lease(self.member, revision):
                await self._lost(partition, "nobody: the bucket no longer shows this replica's lease")

    async def _stop_listening(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._watcher:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None

    async def _hear(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the watcher's "caught up" marker
                self._caught_up.set()
                continue
            gone = entry.operation in (KV_DEL, KV_PURGE)
            if entry.key.startswith(MEMBER):
                member = entry.key.removeprefix(MEMBER)
                if gone:
                    self._heard.pop(member, None)
                    self._changed.set()
                    continue
                at = time.monotonic() - (0.0 if self._caught_up.is_set() else _age(entry.created))
                if time.monotonic() - at >= self.ttl:  # replayed, and older than any live heartbeat
                    continue
                joined = at - self._heard.get(member, float("-inf")) >= self.ttl
                self._heard[member] = at
                if joined and member != self.member:
                    self._changed.set()
            elif entry.key.startswith(LEASE) and entry.key.removeprefix(LEASE).isdigit():
                partition, holder = int(entry.key.removeprefix(LEASE)), "" if gone else (entry.value or b"").decode()
                self._leases[partition] = Lease(holder, entry.revision or 0)
                if holder == self.member:
                    continue  # its own write
                if partition in self.held or (not holder and partition in self._wanted()):
                    self._changed.set()  # taken from it, or let go for it

    async def _try_take(self, partition: int) -> None:
        assert self.kv is not None
        key, lease = f"{LEASE}{partition}", self._leases.get(partition)
        try:
            if lease is None:
                revision = await self.kv.create(key, self.member.encode())
            elif not lease.holder or lease.holder == self.member:  # free, or its own from an answer it never got
                revision = await self.kv.update(key, self.member.encode(), last=lease.revision)
            elif lease.holder not in self._live() and self._hears_itself():  # its holder's heartbeat stopped
                revision = await self.kv.update(key, self.member.encode(), last=lease.revision)
                log.info("lane %s: took partition %d over from %s", self.lane, partition, lease.holder)
            else:
                return  # its holder lets go within a tick, or is counted dead when its heartbeat stops
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError, *UNANSWERED):
            return  # moved meanwhile, or no answer: the watcher tells what it is now, and the next round goes on
        self.held[partition] = revision
        try:
            await self._acquire(partition)
        except Exception as exc:
            expected = getattr(exc, "expected", False)  # the lane says why, plainly (no traceback each try)
            log.log(logging.ERROR, "lane %s: could not start partition %d (%s); trying again in %.0f s", self.lane,
                    partition, exc if expected else repr(exc), self.ttl * (3 if expected else 1),
                    exc_info=not expected)
            self._retry_at[partition] = time.monotonic() + self.ttl * (3 if expected else 1)
            await self.give_up(partition)
        else:
            self._retry_at.pop(partition, None)

    def _hears_itself(self) -> bool:
        """The watcher is current: this replica heard its own heartbeat lately (so a silent member is dead,
        not merely unheard), and has heard what the bucket held when it started watching."""
        return self._caught_up.is_set() and time.monotonic() - self._heard.get(self.member, 0.0) < 2 * self.tick

    async def give_up(self, partition: int) -> None:
        """Stop working ``partition`` and free its lease for whoever should have it."""
        revision = self.held.pop(partition, None)
        await self._release(partition)
        if revision is not None and self.kv:
            with contextlib.suppress(Exception):
                await self.kv.delete(f"{LEASE}{partition}", last=revision)


def _age(created: datetime | None) -> float:
    """Seconds since the server stored an entry (0 if it does not say)."""
    if created is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - (created if created.tzinfo else created.replace(tzinfo=UTC))).total_seconds())
