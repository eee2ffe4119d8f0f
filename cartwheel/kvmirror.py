"""A live copy of a NATS KV bucket in this process, kept by a watch, so a read costs no round trip.

The copy is ``synced`` once the watch has delivered the bucket's current content, and stays so
while the watch runs. After a reconnect the watch may have missed updates, so the copy is
unsynced and watched again from the start; callers read the bucket (or ask its owner) meanwhile.

A synced copy trails the bucket by the watch's delivery (about a millisecond). A reader that must
see every write finished before it began (read-your-writes across processes) awaits
:meth:`KvMirror.current` first: the bucket's last sequence, asked of the server after the read
began, is in the copy (one request shared by the reads waiting together).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)

V = TypeVar("V")

CHECK_EVERY = 1.0  # seconds between looks at the connection while no update arrives
RETRY_AFTER = 1.0  # seconds before watching again after a failure


_IDLE = object()


def _raw(key: str, value: bytes) -> bytes:
    return value


class KvMirror(Generic[V]):
    """Keeps ``decode(key, value)`` of every key of ``bucket``; a value that decodes to None is left out."""

    def __init__(
        self,
        bucket: str,
        client: Callable[[], NatsClient | None],
        decode: Callable[[str, bytes], V | None] = _raw,  # type: ignore[assignment]
    ) -> None:
        self.bucket = bucket
        self.decode = decode
        self._client = client
        self._values: dict[str, V] = {}
        self._synced = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.resyncs = 0  # watches started after the first: reconnects and failures
        self.revision = 0  # the stream sequence of the newest update in the copy (0: none yet)
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []  # (revision, its waiter)
        self._next_round: asyncio.Future[bool] | None = None  # the catch-up check not begun yet
        self._rounds: asyncio.Task[None] | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    def get(self, key: str) -> V | None:
        """The value as last seen; meaningful only while :attr:`synced`."""
        return self._values.get(key)

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> list[V]:
        """Every value as last seen (a copy)."""
        return list(self._values.values())

    def start(self) -> None:
        """Start watching on the running loop (in the background, retrying forever)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"kv-mirror-{self.bucket}")

    async def stop(self) -> None:
        self._stopping = True
        self._synced = False
        if self._rounds is not None:
            self._rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._rounds
            self._rounds = None
        if self._next_round is not None and not self._next_round.done():
            self._next_round.set_result(False)
        self._next_round = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def wait_synced(self, timeout: float) -> bool:
        """True once synced; False if that didn't happen within ``timeout`` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._synced and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self._synced

    async def caught_up(self, nc: NatsClient, timeout: float) -> bool:
        """True once the copy holds every update the bucket had when the server was asked, here and now.

        One request to the server (the bucket stream's state), then a wait of at most ``timeout`` s
        for the watch to deliver up to its last sequence. False when the copy is not synced or did
        not catch up in time: the caller reads the bucket instead. An empty stream (its last entry
        expired by age) has nothing to deliver.
        """
        if not self._synced:
            return False
        state = (await nc.jetstream().stream_info(f"KV_{self.bucket}")).state
        if not self._synced:  # the watch started over while the server answered
            return False
        if state.messages == 0 or self.revision >= state.last_seq:
            return True
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (state.last_seq, reached)
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(reached), timeout)
        except TimeoutError:
            return False
        finally:
            if not reached.done():
                reached.cancel()
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
        return self._synced and self.revision >= state.last_seq

    async def current(self, nc: NatsClient, timeout: float) -> bool:
        """:meth:`caught_up`, one check shared by every caller waiting for it.

        A caller that arrives while a check runs waits for the next one (the running one may have
        asked the server before the caller began); all callers waiting then share that answer. Under
        load, one request to the server serves a batch of reads.
        """
        if not self._synced:
            return False
        if self._next_round is None:
            self._next_round = asyncio.get_running_loop().create_future()
        mine = self._next_round
        if self._rounds is None or self._rounds.done():
            self._rounds = asyncio.get_running_loop().create_task(self._run_rounds(nc, timeout))
        return await asyncio.shield(mine)

    async def _run_rounds(self, nc: NatsClient, timeout: float) -> None:
        while (round_ := self._next_round) is not None:
            self._next_round = None
            try:
                ok = await self.caught_up(nc, timeout)
            except asyncio.CancelledError:
                round_.set_result(False)
                raise
            except Exception as error:  # not current: the callers ask the bucket's owner instead
                log.info("kv mirror of %s could not check it is current: %r", self.bucket, error)
                ok = False
            round_.set_result(ok)

    def _advance(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        if self._waiting:
            still = []
            for wanted, waiter in self._waiting:
                if waiter.done():
                    continue
                if wanted <= self.revision:
                    waiter.set_result(None)
                else:
                    still.append((wanted, waiter))
            self._waiting = still

    async def _run(self) -> None:
        watches = 0
        while not self._stopping:
            try:
                nc = self._client()
            except Exception:  # no connection object yet
                nc = None
            if nc is not None and nc.is_connected:
                watches += 1
                self.resyncs = max(0, watches - 1)
                try:
                    await self._follow(nc)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # a missing bucket, a timeout: watch again shortly
                    log.info("kv mirror of %s stopped (%r); watching again", self.bucket, error)
            self._synced = False
            if nc is not None and nc.is_closed:
                return
            await asyncio.sleep(RETRY_AFTER)

    async def _follow(self, nc: NatsClient) -> None:
        reconnects = nc.stats["reconnects"]
        self.revision = 0
        kv: KeyValue = await nc.jetstream().key_value(self.bucket)
        watcher = await kv.watchall()
        loading: dict[str, V] | None = {}  # the current content, until the watch says it is all here
        try:
            while not self._stopping:
                try:
                    entry = await watcher.updates(timeout=CHECK_EVERY)
                except nats.errors.TimeoutError:
                    entry = _IDLE
                if nc.stats["reconnects"] != reconnects or not nc.is_connected:
                    return  # updates may have been missed while away
                if entry is _IDLE:
                    continue
                if entry is None:  # the watch's marker: everything the bucket held has arrived
                    if loading is not None:
                        self._values, loading = loading, None
                        self._synced = True
                        self._advance(self.revision)
                    continue
                values = self._values if loading is None else loading
                value = None if entry.operation in (KV_DEL, KV_PURGE) else self._decode(entry.key, entry.value or b"")
                if value is None:
                    values.pop(entry.key, None)
                else:
                    values[entry.key] = value
                if loading is None:
                    self._advance(entry.revision or 0)
                else:
                    self.revision = max(self.revision, entry.revision or 0)
        finally:
            self._synced = False
            for _, waiter in self._waiting:  # they answer False at once: the copy is not current
                if not waiter.done():
                    waiter.set_result(None)
            self._waiting = []
            with contextlib.suppress(Exception):
                await watcher.stop()

    def _decode(self, key: str, value: bytes) -> V | None:
        try:
            return self.decode(key, value)
        except ValueError as error:  # pydantic's ValidationError is a ValueError
            log.warning("kv mirror of %s skips an unreadable entry %s: %s", self.bucket, key, error)
            return None
