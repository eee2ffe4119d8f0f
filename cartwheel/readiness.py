"""A service's look at itself every 2 s: whether it can serve (readiness), and the gauges an incident reads.

Ready means: connected to NATS; a database write can begin within a second; no outbox event has waited
30 s; and whatever the service's parts add (lanes: leases renewed within their time, no partition
stopped behind its stream). The answer is kept, so ``/readyz``, the health subject and the ``ready``
gauge read it for free, and a change is logged once each way. Whether the event loop runs at all is
told apart by a tick of its own: a slow check (NATS electing a leader) is not a stuck loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cartwheel import subjects
from cartwheel.contracts.base import utcnow
from cartwheel.outbox import OutboxRelay

if TYPE_CHECKING:
    from cartwheel.service import Service

SELF_CHECK_S = 2.0  # how often a service checks itself (and brings its gauges up to date)
CONSUMERS_EVERY_S = 10.0  # how often it asks JetStream for its consumers' backlogs (API requests every replica
# makes: not at start, when a new cluster's streams are still electing leaders and a burst of them timed out others)
WRITE_PROBE_S = 1.0  # a database that can't begin a write within this is a reason not to be ready
OUTBOX_STALE_S = 30.0  # an event unpublished for this long is a reason not to be ready (NATS refuses it, ...)
TICK_S = 1.0  # the event loop's own sign of life
STUCK_S = 7.0  # no tick for this long: the loop is blocked (readiness says so)
LIVENESS_S = 60.0  # ... for this long: /healthz says 503, and an orchestrator restarts the process

T = TypeVar("T")
log = logging.getLogger(__name__)


class Readiness:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.problems: list[str] = ["starting"]  # what keeps it from being ready, as the last check found
        self.checks: list[Callable[[], list[str]]] = []  # each says what is wrong now (a part of the service's)
        self._ticked_at = time.monotonic()
        self._running: dict[str, asyncio.Future[Any]] = {}  # checks on threads, one of each kind at a time
        self._tasks: list[asyncio.Task[None]] = []
        self.outbox_stale_s = OUTBOX_STALE_S
        self.consumers_every_s = CONSUMERS_EVERY_S
        self._counted_at = time.monotonic()  # the consumers' backlogs: first asked CONSUMERS_EVERY_S after start

    def now(self) -> list[str]:
        """What keeps this replica from serving (empty: ready), as the last check found, and a stuck loop."""
        stuck = time.monotonic() - self._ticked_at
        if stuck > STUCK_S:
            return [*self.problems, f"its event loop has not run for {stuck:.0f} s"]
        return list(self.problems)

    def alive(self) -> bool:
        """Liveness (``/healthz``): the event loop runs. An outage of NATS or the database is no reason to restart:
        readiness says it, and the service recovers when they are back."""
        return time.monotonic() - self._ticked_at < LIVENESS_S

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(), name=f"{self.service.name}-self-check"),
                       asyncio.create_task(self._tick(), name=f"{self.service.name}-tick")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tick(self) -> None:
        while True:
            self._ticked_at = time.monotonic()
            await asyncio.sleep(TICK_S)

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # a check of its own failing must not end the loop
                self.problems = [f"self-check failed: {exc!r}"]
                log.exception("%s: self-check failed", self.service.name)
            await asyncio.sleep(SELF_CHECK_S)

    async def check(self) -> list[str]:
        """Look at everything readiness covers, bring the gauges up to date, and log when readiness changes."""
        service, metrics = self.service, self.service.metrics
        connection = service.broker._connection  # None until the broker has connected
        connected = bool(connection and connection.is_connected)
        metrics.nats_connected.set(1 if connected else 0)
        problems = [] if connected else ["not connected to NATS"]
        problems += await self._probe_database()
        problems += await self._check_outbox()
        if connected and time.monotonic() - self._counted_at >= self.consumers_every_s:
            self._counted_at = time.monotonic()
            await self._count_consumers()
        problems += [problem for check in self.checks for problem in check()]
        metrics.pool_checked_out.set(getattr(service.db.engine.pool, "checkedout", lambda: 0)())
        if _kinds(problems) != _kinds(self.problems) and not (self.problems == ["starting"] and not problems):
            if problems:  # the same problems with other figures (an age, a count) are no news
                log.warning("%s is not ready: %s", service.name, "; ".join(problems))
            else:
                log.info("%s is ready again", service.name)
        self.problems = problems
        metrics.ready.set(0 if problems else 1)
        return problems

    async def _probe_database(self) -> list[str]:
        """A write that begins and is let go (:meth:`Database.write_probe`), bounded; none while writes go through."""
        db = self.service.db
        if time.monotonic() - db.wrote_at < SELF_CHECK_S:
            return []
        try:
            why = await self._bounded("probe", lambda: db.write_probe(WRITE_PROBE_S))
        except TimeoutError:
            return [f"database: a write did not begin within {WRITE_PROBE_S:g} s"]
        return [f"database: {why}"] if why else []

    async def _check_outbox(self) -> list[str]:
        try:
            pending, oldest = await self._bounded("outbox", lambda: self.service.db.read_sync(OutboxRelay.backlog))
        except Exception as exc:
            return [f"database: the outbox could not be read ({type(exc).__name__})"]
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        self.service.metrics.outbox_pending.set(pending)
        self.service.metrics.outbox_age.set(age)
        if age > self.outbox_stale_s:
            return [f"outbox: {pending} events wait to be published, the oldest for {age:.0f} s"]
        return []

    async def _bounded(self, name: str, work: Callable[[], T]) -> T:
        """``work`` on a thread, waited for at most WRITE_PROBE_S + 0.5 s (TimeoutError); while one hangs (a
        database server that does not answer), later checks wait for it instead of starting another."""
        running = self._running.get(name)
        if running is None or running.done():
            running = self._running[name] = asyncio.get_running_loop().run_in_executor(None, work)
        async with asyncio.timeout(WRITE_PROBE_S + 0.5):
            return await asyncio.shield(running)  # type: ignore[no-any-return]

    async def _count_consumers(self) -> None:
        """Each EVENTS consumer's backlog, asked of JetStream together and bounded (its leader may be moving)."""
        service = self.service

        async def count(durable: str) -> None:
            with contextlib.suppress(Exception):  # not made yet, or NATS slow: the gauges keep their last values
                info = await service.js.consumer_info(subjects.EVENTS_STREAM, durable, timeout=1)
                service.metrics.consumer_pending.labels(service.name, durable).set(info.num_pending or 0)
                service.metrics.consumer_unacked.labels(service.name, durable).set(info.num_ack_pending or 0)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                await asyncio.gather(*map(count, service.event_consumers))


def _kinds(problems: list[str]) -> list[str]:
    """Problems without their figures: what changes readiness, as opposed to how long it has lasted."""
    return [re.sub(r"\d+(\.\d+)?", "#", problem) for problem in problems]
