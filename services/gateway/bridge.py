"""One NATS connection per worker process, on a background asyncio loop, used by views as blocking calls.

Under gunicorn's gevent worker, :meth:`NatsBridge.start` runs after monkey-patching, so the
"thread" that runs the loop is a greenlet and waiting on a call yields to other requests.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from cartwheel import bus, natsauth, subjects, tracing
from cartwheel.contracts.base import Message
from cartwheel.errors import ServiceUnavailable
from cartwheel.kvmirror import KvMirror
from cartwheel.settings import Settings
from services.gateway.tenancy import LiveHosts

log = logging.getLogger("cartwheel.gateway.bridge")

T = TypeVar("T")
Work = Awaitable[T] | Callable[[], Awaitable[T]]

KV_TIMEOUT = 1.0
OBJECT_TIMEOUT = 15.0  # an image of 5 MB travels in 128 kB chunks
# Buckets each worker keeps a live copy of (a watch), so reading them costs no round trip. Product
# reads ask for each product's stock; a copy that trails the bucket by a moment is fine there.
# A product itself must not trail: an admin's change, answered by one worker, must be what any
# worker serves next. Reads of CURRENT buckets first make sure the copy holds every write the
# bucket had when they began (one server request shared by all the reads waiting together).
MIRRORED = frozenset({subjects.INVENTORY_STOCK_BUCKET, subjects.CATALOG_CACHE_BUCKET})
CURRENT = frozenset({subjects.CATALOG_CACHE_BUCKET})
CATCH_UP = 0.1  # seconds a read waits for its copy to receive what the bucket already has; then it asks the bucket
GRACE = 0.5  # Extra seconds the bridge waits so the bus's own timeout fires first and names the subject.


class NatsBridge:
    """Owns the event loop, the NATS client and the JetStream handles of one worker process."""

    def __init__(self, settings: Settings, *, name: str = "cartwheel-gateway") -> None:
        self.settings = settings
        self.name = name
        self.loop_kind: str | None = None  # "greenlet" or "thread", once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: threading.Thread | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._buckets: dict[str, KeyValue] = {}
        self._object_stores: dict[str, ObjectStore] = {}
        self._mirrors: dict[str, KvMirror[bytes]] = {}
        self.hosts = LiveHosts(settings, lambda: self._nc)  # the tenant directory, watched from the loop's start
        self._lock = threading.Lock()
        self._failures = 0
        self._connecting: asyncio.Task[None] | None = None
        self._closing = False
        self._reconnect_hooks: list[Callable[[], None]] = []
        # Calls from greenlets waiting for the loop to start them; one wake-up of the loop serves them all.
        self._inbox: collections.deque[tuple[Work[Any], _Pending]] = collections.deque()
        self._woken = False

    # -- life cycle -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._loop is not None

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def start(self, wait: float = 0.0) -> None:
        """Start the loop and begin connecting (forever, in the background); wait up to ``wait`` s."""
        with self._lock:
            if self._loop is not None:
                return
            ready = threading.Event()
            self._runner = threading.Thread(target=self._run, args=(ready,), name="nats-bridge", daemon=True)
            self._runner.start()
            ready.wait()
        if wait > 0:
            self.wait_connected(wait)

    def _run(self, ready: threading.Event) -> None:
        # An OS thread's current greenlet is that thread's root (no parent); a gevent greenlet has the hub.
        self.loop_kind = "greenlet" if greenlet.getcurrent().parent is not None else "thread"
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._connecting = loop.create_task(self._connect())
        self._connecting.add_done_callback(_log_failure)
        loop.call_soon(self.hosts.start)
        loop.call_soon(ready.set)
        log.info("gateway nats bridge loop running in a %s", self.loop_kind)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _connect(self) -> None:
        self._nc = NatsClient()
        await self._nc.connect(
            self.settings.nats_servers,
            name=self.name,
            max_reconnect_attempts=-1,  # also retries the first connect forever
            reconnect_time_wait=1,
            connect_timeout=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **natsauth.connect_options(self.settings, natsauth.GATEWAY),
        )
        self._js = self._nc.jetstream(timeout=self.settings.request_timeout)
        self._failures = 0
        log.info("gateway connected to nats")

    async def _on_error(self, error: Exception) -> None:
        self._failures += 1
        # Log the first failure and then every 30th, so a NATS outage doesn't flood the log.
        if self._failures == 1 or self._failures % 30 == 0:
            log.warning("gateway nats error (%d so far): %r", self._failures, error)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("gateway disconnected from nats; reconnecting")

    async def _on_reconnected(self) -> None:
        self._failures = 0
        log.info("gateway reconnected to nats")
        for hook in list(self._reconnect_hooks):
            try:
                hook()
            except Exception:  # one listener's bug must not keep the others from hearing of the gap
                log.exception("gateway reconnect hook failed")

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the loop (it must not block) after every reconnect: core messages of the gap are lost."""
        self._reconnect_hooks.append(hook)

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds passed; True when connected."""
        try:
            self.call(self._until_connected(), timeout)
        except ServiceUnavailable:
            return False
        return True

    async def _until_connected(self) -> None:
        while not self.connected:
            await asyncio.sleep(0.05)

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection (or stop connecting) and stop the loop. Safe to call twice."""
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or loop.is_closed():
            return
        self._closing = True
        try:
            self.call(self._shutdown(), timeout)
        except Exception:  # a close that fails leaves nothing to clean up
            log.warning("gateway nats close failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout)
        self._loop = None
        for work, _ in self._inbox:  # queued after the loop's last turn: never started
            _discard(work)
        self._inbox.clear()
        self._woken = False

    async def _shutdown(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        await self._stop_mirrors()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    # -- calls from views --------------------------------------------------------------------

    def call(self, work: Work[T], timeout: float, what: str = "nats") -> T:
        """Run ``work`` (a coroutine, or a function returning one) on the loop; wait at most ``timeout`` s.

        On timeout the coroutine is cancelled and :class:`ServiceUnavailable` raised; any other
        exception of the coroutine is raised here.
        """
        loop = self._loop
        if loop is None:
            _discard(work)
            raise ServiceUnavailable(what, "the gateway's nats bridge is not started")
        if threading.current_thread() is self._runner:
            _discard(work)
            raise RuntimeError("NatsBridge.call from the bridge's own loop would deadlock; await instead")
        if self.loop_kind == "greenlet":
            return self._call_from_greenlet(loop, work, timeout, what)
        future = asyncio.run_coroutine_threadsafe(_invoke(work), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ServiceUnavailable(what, f"no answer within {timeout:g} s") from None

    def _call_from_greenlet(self, loop: asyncio.AbstractEventLoop, work: Work[T], timeout: float, what: str) -> T:
        """:meth:`call` when the loop is a greenlet of this thread: gevent's own waiting, batched wake-ups.

        ``run_coroutine_threadsafe`` would pay, per call, a thread-safe future (a Condition and its
        locks) and a byte through the loop's self-pipe. Here calls queue up and the loop is woken once
        for all the calls that arrived while it was busy; each waits on a gevent ``AsyncResult``,
        which the loop's greenlet sets directly.
        """
        pending = _Pending()
        self._inbox.append((work, pending))
        if not self._woken:
            self._woken = True
            try:
                loop.call_soon_threadsafe(self._start_queued)
            except RuntimeError:  # the loop is closed (the worker is stopping): nothing will run
                self._woken = False
                self._inbox.clear()
                _discard(work)
                raise ServiceUnavailable(what, "the gateway's nats bridge is stopped") from None
        try:
            # wait() rather than get(timeout=): a gevent.Timeout of an enclosing block must reach its owner
            pending.result.wait(timeout)
        except BaseException:  # the caller is killed (GreenletExit) or timed out from outside
            pending.cancel(loop)
            raise
        if not pending.result.ready():
            pending.cancel(loop)
            raise ServiceUnavailable(what, f"no answer within {timeout:g} s")
        result, pending = pending.result, None
        if result.successful():
            return result.value  # type: ignore[no-any-return]
        error, result = result.exception, None
        try:
            raise error
        finally:  # neither this frame nor gevent's reraise may hold the error its traceback holds: no cycle per refusal
            error = None

    def _start_queued(self) -> None:
        self._woken = False
        while self._inbox:
            work, pending = self._inbox.popleft()
            pending.start(work)

    @property
    def nc(self) -> NatsClient:
        """The connected client; raises :class:`ServiceUnavailable` while NATS is unreachable."""
        if self._nc is None or not self._nc.is_connected:
            raise ServiceUnavailable("nats", "not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        self.nc  # noqa: B018 -- raises while disconnected
        assert self._js is not None, "the jetstream context is set once connected"
        return self._js

    def request(self, message: Message, timeout: float | None = None) -> Any:
        """Send ``message`` to its subject and return the reply's data (see :func:`cartwheel.bus.request`)."""
        timeout = timeout or self.settings.request_timeout
        nc = self.nc
        subject: str = message.subject  # type: ignore[attr-defined]
        # The trace is this greenlet's: its headers are made here, the loop that sends them has a context of its own.
        if tracing.enabled:
            with tracing.span(subject, kind=tracing.CLIENT):
                headers = tracing.inject()
                return self.call(bus.request(nc, message, timeout, headers=headers), timeout + GRACE, what=subject)
        headers = tracing.inject()  # None without a trace: a plain PUB, no header block
        return self.call(bus.request(nc, message, timeout, headers=headers), timeout + GRACE, what=subject)

    def ping(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """A raw request (health probes): the reply's bytes."""
        nc = self.nc

        async def ask() -> bytes:
            try:
                return (await nc.request(subject, payload, timeout=timeout)).data
            except nats.errors.NoRespondersError:
                raise ServiceUnavailable(subject, "no service is listening") from None
            except (TimeoutError, nats.errors.TimeoutError):
                raise ServiceUnavailable(subject, f"no answer within {timeout:g} s") from None

        return self.call(ask(), timeout + GRACE, what=subject)

    def subscribe(
        self, subject: str, on_message: Callable[[bytes], None], timeout: float | None = None
    ) -> Callable[[], None]:
        """Subscribe to ``subject`` on core NATS; returns once the server has the subscription.

        ``on_message(data)`` runs on the bridge's loop, so it must not block. nats-py renews the
        subscription after a reconnect. The returned function unsubscribes (safe to call twice).
        """
        timeout = timeout or self.settings.request_timeout
        nc = self.nc

        async def deliver(msg: Msg) -> None:
            on_message(msg.data)

        async def open_subscription() -> Any:
            sub = await nc.subscribe(subject, cb=deliver)
            try:
                await nc.flush(timeout)  # the server has it: nothing published after this call returns is missed
            except (nats.errors.Error, TimeoutError) as error:
                await sub.unsubscribe()
                raise ServiceUnavailable(subject, repr(error)) from None
            return sub

        sub = self.call(open_subscription(), timeout + GRACE, what=subject)
        loop = self._loop

        def unsubscribe() -> None:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_quietly(sub.unsubscribe())))

        return unsubscribe

    def kv_get(self, bucket: str, key: str, timeout: float | None = None) -> bytes | None:
        """The value under ``key`` in ``bucket``; None when the key or the bucket doesn't exist.

        Raises :class:`ServiceUnavailable` when NATS doesn't answer within ``timeout`` (default: 1 s at most).
        """
        timeout = timeout or min(KV_TIMEOUT, self.settings.request_timeout)
        mirror = self.mirror(bucket)
        if mirror is not None and mirror.synced and (bucket not in CURRENT or self._current(mirror, timeout)):
            return mirror.get(key)
        self.nc  # noqa: B018 -- fail fast while disconnected
        return self.call(self._kv_get(bucket, key), timeout, what=bucket)

    def _current(self, mirror: KvMirror[bytes], timeout: float) -> bool:
        """True when ``mirror`` holds every write its bucket had when this call began (:meth:`KvMirror.current`:
        the reads waiting together on the bridge's loop share one check)."""
        try:
            return self.call(mirror.current(self.nc, CATCH_UP), timeout, what=mirror.bucket)
        except ServiceUnavailable:
            return False

    def kv_is_local(self, bucket: str) -> bool:
        """True when :meth:`kv_get` of ``bucket`` reads this worker's live copy (for a CURRENT bucket,
        after a catch-up check shared with the other reads waiting then)."""
        mirror = self.mirror(bucket)
        return mirror is not None and mirror.synced

    def mirror(self, bucket: str) -> KvMirror[bytes] | None:
        """This worker's live copy of ``bucket`` if it is one of :data:`MIRRORED` (started on first use)."""
        if bucket not in MIRRORED:
            return None
        mirror = self._mirrors.get(bucket)
        if mirror is None:
            with self._lock:
                mirror = self._mirrors.get(bucket)
                loop = self._loop
                if mirror is None and loop is not None:
                    mirror = self._mirrors[bucket] = KvMirror(bucket, lambda: self._nc)
                    loop.call_soon_threadsafe(mirror.start)
        return mirror

    async def _stop_mirrors(self) -> None:
        for mirror in self._mirrors.values():
            await mirror.stop()
        await self.hosts.stop()

    async def key_value(self, bucket: str) -> KeyValue:
        """The bucket's handle, looked up once per worker (runs on the loop)."""
        kv = self._buckets.get(bucket)
        if kv is None:
            kv = self._buckets[bucket] = await self.js.key_value(bucket)
        return kv

    async def _kv_get(self, bucket: str, key: str) -> bytes | None:
        try:
            kv = await self.key_value(bucket)
            entry = await kv.get(key)
        except nats.js.errors.NotFoundError:  # no such bucket, key, or a deleted key
            return None
        except (nats.errors.Error, TimeoutError) as error:
            raise ServiceUnavailable(bucket, repr(error)) from None
        return entry.value


    # -- object store ------------------------------------------------------------------------

    def object_get(self, bucket: str, name: str, timeout: float | None = None) -> bytes | None:
        """The object's bytes; None when it (or the bucket) doesn't exist or was deleted."""
        self.nc  # noqa: B018 -- fail fast while disconnected

        async def get() -> bytes | None:
            try:
                return (await (await self._object_store(bucket)).get(name)).data
            except nats.js.errors.NotFoundError:  # no bucket, no object, or a deleted one
                return None

        return self._object_call(get(), bucket, timeout)

    def object_put(self, bucket: str, name: str, data: bytes, timeout: float | None = None) -> None:
        """Store ``data`` under ``name``, replacing what was there."""
        self.nc  # noqa: B018

        async def put() -> None:
            await (await self._object_store(bucket)).put(name, data)

        self._object_call(put(), bucket, timeout)

    def object_delete(self, bucket: str, name: str, timeout: float | None = None) -> None:
        """Delete ``name``; deleting what is not there is no error."""
        self.nc  # noqa: B018

        async def delete() -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await (await self._object_store(bucket)).delete(name)

        self._object_call(delete(), bucket, timeout)

    def _object_call(self, work: Awaitable[T], bucket: str, timeout: float | None) -> T:
        async def guarded() -> T:
            try:
                return await work
            except (nats.errors.Error, TimeoutError) as error:
                raise ServiceUnavailable(bucket, repr(error)) from None

        return self.call(guarded(), timeout or OBJECT_TIMEOUT, what=bucket)

    async def _object_store(self, bucket: str) -> ObjectStore:
        store = self._object_stores.get(bucket)
        if store is None:
            store = self._object_stores[bucket] = await self.js.object_store(bucket)
        return store


class _Pending:
    """One call from a greenlet: its task on the loop and the gevent result its caller waits on."""

    __slots__ = ("cancelled", "result", "task")

    def __init__(self) -> None:
        from gevent.event import AsyncResult

        self.result = AsyncResult()
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False

    def start(self, work: Work[Any]) -> None:
        if self.cancelled:  # the caller gave up before the loop came to it
            _discard(work)
            return
        self.task = asyncio.ensure_future(_invoke(work))
        self.task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.result.set_exception(concurrent.futures.CancelledError())
        elif (error := task.exception()) is not None:
            self.result.set_exception(error)
        else:
            self.result.set(task.result())

    def cancel(self, loop: asyncio.AbstractEventLoop) -> None:
        self.cancelled = True
        if self.task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: the task went with it
                loop.call_soon_threadsafe(self.task.cancel)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("gateway cannot connect to nats", exc_info=task.exception())


async def _quietly(work: Awaitable[Any]) -> None:
    with contextlib.suppress(nats.errors.Error):  # already gone with its connection
        await work


async def _invoke(work: Work[T]) -> T:
    return await (work() if callable(work) else work)


def _discard(work: Work[Any]) -> None:
    if asyncio.iscoroutine(work):
        work.close()  # never awaited: close it so Python doesn't warn
