"""Which replica applies which partition: membership and leases in a KV bucket whose entries expire.

Every replica writes ``member.<id>`` each tick; partitions are dealt round-robin over the
sorted live members, so they spread evenly and every replica computes the same answer. A
replica works a partition only while it holds ``lease.<n>`` (created only when absent,
renewed each tick with compare-and-set). A crashed replica's entries expire after ``ttl``;
a leaving one deletes them at once. The database cursor, not the lease, is what makes a
double owner harmless (see :func:`cartwheel.lanes.store.apply_batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

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
                 release: Hook, ttl: float = 3.0, tick: float = 0.5, replicas: int = 1) -> None:
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

    async def start(self) -> None:
        bucket = subjects.lane_bucket(self.lane)
        await ensure_bucket(self.js, KeyValueConfig(bucket=bucket, history=1, ttl=self.ttl, storage=StorageType.MEMORY,
                                                    replicas=self.replicas,
                                                    description=f"replicas and partition leases of lane {self.lane}"))
        self.kv = await self.js.key_value(bucket)
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

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.tick)
            try:
                await self._round()
            except Exception:
                log.exception("lane %s: ownership round failed", self.lane)

    async def _round(self) -> None:
        assert self.kv is not None
        await self.kv.put(f"member.{self.member}", b"")
        await self._renew()
        members = await self._members()
        wanted = {p for p, m in assignment(members, self.partitions).items() if m == self.member}
        for partition in sorted(set(self.held) - wanted):
            await self.give_up(partition)
        for partition in sorted(wanted - set(self.held)):
            await self._try_take(partition)

    async def _members(self) -> list[str]:
        assert self.kv is not None
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return [self.member]
        return [k.removeprefix("member.") for k in keys if k.startswith("member.")] or [self.member]

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
