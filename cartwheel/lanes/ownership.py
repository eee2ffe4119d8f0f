"""Which replica applies which partition: membership and leases in a KV bucket whose entries expire.

Every replica writes ``member.<id>`` each tick (its heartbeat) and hears the others' through one
watcher on ``member.>``: a member is live while its heartbeat was heard within ``ttl``. Partitions
are dealt round-robin over the sorted live members, so they spread evenly and every replica
computes the same answer. A replica works a partition only while it holds ``lease.<n>``
(created only when absent, renewed each tick with compare-and-set). A crashed replica's entries
expire after ``ttl``; a leaving one deletes them at once, and the others hear it and take over
without waiting for their tick. The database cursor, not the lease, is what makes a double owner
harmless (see :func:`cartwheel.lanes.store.apply_batch`).

An idle replica costs one heartbeat and one renewal per held lease each tick (a third of the
TTL) and nothing else: no listing of the bucket, which would create a consumer every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cartwheel import subjects
from cartwheel.bus import ensure_bucket

log = logging.getLogger(__name__)

Hook = Callable[[int], Awaitable[None]]


def assignment(members: list[str], partitions: int) -> dict[int, str]:
    """Partition → member, dealt round-robin over the sorted members (even to within one)."""
    ordered = sorted(members)
    return {p: ordered[p % len(ordered)] for p in range(partitions)} if ordered else {}


class Ownership:
    def __init__(self, js: JetStreamContext, lane: str, partitions: int, member: str, *, acquire: Hook,
                 release: Hook, ttl: float = 3.0, tick: float = 1.0, replicas: int = 1) -> None:
        self.js = js
        self.lane = lane
        self.partitions = partitions
        self.member = member
        self._acquire = acquire
        self._release = release
        self.ttl = ttl
        self.tick = tick
        self.replicas = replicas
        self.held: dict[int, int] = {}  # partition → lease revision
        self.kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._heard: dict[str, float] = {}  # member → when its heartbeat was last heard (monotonic)
        self._changed = asyncio.Event()  # a member joined or left: deal the partitions again now
        self._watcher: KeyValue.KeyWatcher | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening_since = 0.0

    async def start(self) -> None:
        bucket = subjects.lane_bucket(self.lane)
        await ensure_bucket(self.js, KeyValueConfig(bucket=bucket, history=1, ttl=self.ttl, storage=StorageType.MEMORY,
                                                    replicas=self.replicas,
                                                    description=f"replicas and partition leases of lane {self.lane}"))
        self.kv = await self.js.key_value(bucket)
        await self._listen()
        await self._round()
        self._task = asyncio.create_task(self._run(), name=f"lane-{self.lane}-ownership")

    async def stop(self) -> None:
        """Hand every partition back at once, so the other replicas take over within a tick."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for partition in list(self.held):
            await self.give_up(partition)
        if self.kv:
            with contextlib.suppress(Exception):
                await self.kv.delete(f"member.{self.member}")
        await self._stop_listening()

    async def _run(self) -> None:
        waiting = False  # wanted partitions are still held by others: look again soon, they are being let go
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick / 4 if waiting else self.tick):
                    await self._changed.wait()
            self._changed.clear()
            try:
                waiting = await self._round()
            except Exception:
                log.exception("lane %s: ownership round failed", self.lane)

    async def _round(self) -> bool:
        """Heartbeat, renew, and take or give up partitions; True while a wanted one is still held by another."""
        assert self.kv is not None
        await self.kv.put(f"member.{self.member}", b"")
        if time.monotonic() - max(self._heard.get(self.member, 0.0), self._listening_since) > self.ttl:
            log.warning("lane %s: heard no heartbeat, not even its own, for %.0f s; watching again", self.lane,
                        self.ttl)
            await self._listen()
        await self._renew()
        wanted = {p for p, m in assignment(self._members(), self.partitions).items() if m == self.member}
        for partition in sorted(set(self.held) - wanted):
            await self.give_up(partition)
        for partition in sorted(wanted - set(self.held)):
            await self._try_take(partition)
        return bool(wanted - set(self.held))

    def _members(self) -> list[str]:
        """The members heard within ``ttl``, this one always among them."""
        now = time.monotonic()
        return sorted({m for m, at in self._heard.items() if now - at < self.ttl} | {self.member})

    async def _listen(self) -> None:
        """(Re)start the watcher that hears every member's heartbeat and departure."""
        assert self.kv is not None
        await self._stop_listening()
        self._heard.clear()
        self._listening_since = time.monotonic()
        self._watcher = await self.kv.watch("member.>")
        self._listener = asyncio.create_task(self._hear(self._watcher), name=f"lane-{self.lane}-members")

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
                continue
            member = entry.key.removeprefix("member.")
            if entry.operation in (KV_DEL, KV_PURGE):
                self._heard.pop(member, None)
                self._changed.set()
            else:
                joined = time.monotonic() - self._heard.get(member, float("-inf")) >= self.ttl
                self._heard[member] = time.monotonic()
                if joined and member != self.member:
                    self._changed.set()

    async def _renew(self) -> None:
        assert self.kv is not None
        for partition, revision in list(self.held.items()):
            try:
                self.held[partition] = await self.kv.update(f"lease.{partition}", self.member.encode(), last=revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                log.warning("lane %s: lease on partition %d lost; stopping it", self.lane, partition)
                del self.held[partition]
                await self._release(partition)

    async def _try_take(self, partition: int) -> None:
        assert self.kv is not None
        try:
            revision = await self.kv.create(f"lease.{partition}", self.member.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # still held by its previous owner: it lets go within a tick, or its lease expires
        self.held[partition] = revision
        try:
            await self._acquire(partition)
        except Exception:
            log.exception("lane %s: could not start partition %d", self.lane, partition)
            await self.give_up(partition)

    async def give_up(self, partition: int) -> None:
        """Stop working ``partition`` and free its lease for whoever should have it."""
        revision = self.held.pop(partition, None)
        await self._release(partition)
        if revision is not None and self.kv:
            with contextlib.suppress(Exception):
                await self.kv.delete(f"lease.{partition}", last=revision)
