"""The collector and a started process: what every process did once, it leaves out of the collector's reach.

A started service holds about 130,000 objects that live as long as it does (modules, classes, the
pydantic-core validators of every contract, SQLAlchemy's tables). Python's cyclic collector visits
all of them in each full collection: about 95 ms here, and under load one came every second or
so (objects alive during younger collections count towards the next full one), ~15 % of the
orders service's CPU in a sold-out sale. Frozen, they are skipped; garbage made afterwards is
collected as before.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect what starting up left behind, then freeze the rest; returns how many objects are now frozen.

    Call it once the process is ready (after imports, connections, subscriptions). Objects created
    later are collected as usual; a frozen one that becomes garbage is freed by reference counting
    only, so only what lives for the process's whole life should be here. What does not, and is
    cyclic, stays: e.g. the first NATS connection's transport, replaced after a reconnect (once
    per process; bounded).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def time_collections(observe: Callable[[int, float], None]) -> Callable[[str, dict[str, Any]], None]:
    """Hand each run of the collector to ``observe(generation, seconds)`` (a metric's); returns the callback, for
    ``gc.callbacks.remove``. A process's own: the callbacks are the interpreter's, not a service's."""
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            observe(info["generation"], time.perf_counter() - started[0])

    gc.callbacks.append(timed)
    return timed


SETTLE_QUIET_S = 1.0
"""How long after the last database opened the heap is settled: a burst of tenants opening is settled once."""
SETTLE_EVERY_S = 5.0
"""Settled at most this often: tenants opening one after another don't make a full collection each (a settle costs
one full collection of the unfrozen heap, which under load came every few seconds anyway)."""
RECLAIM_EVERY_S = 600.0
"""A settle first unfreezes everything (a full collection of the whole heap, ~0.2 s) at most this often, and only
after a database closed or ``RECLAIM_AFTER`` settles: what was frozen alive and has since become cyclic garbage
(a closed tenant's engine, a task in flight at a settle) is freed then."""
RECLAIM_AFTER = 20


class HeapSettler:
    """Freezes what a service opened after it started, once openings settle: a tenant's database (its engine, pools,
    compiled statements, outbox relay) lives as long as it stays open, like what the service started with.

    With 100 busy tenants the cart service held ~100,000 such objects outside the frozen startup heap, and each full
    collection visited them: 60-90 ms with the loop stopped, every 4-5 s under load, where one shop's took 5-12 ms.
    A settle (``SETTLE_QUIET_S`` after the last opening, at most every ``SETTLE_EVERY_S``) is one full collection of
    the unfrozen heap, then :func:`gc.freeze`.

    What is frozen alive and later turns into cyclic garbage (the engine of a tenant evicted from the open set, a
    task in flight at the settle) is not collected while frozen. A settle unfreezes everything first, at most every
    ``RECLAIM_EVERY_S``, once a database closed or ``RECLAIM_AFTER`` settles have passed: such garbage is bounded by
    what the settles of ``RECLAIM_EVERY_S`` froze (120 at most). :meth:`opened` and :meth:`closed` may be called
    from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, quiet: float = SETTLE_QUIET_S,
                 every: float = SETTLE_EVERY_S, reclaim_every: float = RECLAIM_EVERY_S) -> None:
        self._loop = loop
        self.quiet, self.every, self.reclaim_every = quiet, every, reclaim_every
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._settled_at = -math.inf
        self._reclaimed_at = time.monotonic()
        self._closed = False
        self._unreclaimed = 0  # settles since the last reclaim
        self.settles = 0
        self.reclaims = 0

    def opened(self) -> None:
        """A database opened: settle once openings have been quiet a while."""
        self._loop.call_soon_threadsafe(self._schedule)

    def closed(self) -> None:
        """A database closed: the next settle due for a reclaim frees what it left frozen."""
        self._closed = True

    def stop(self) -> None:
        """No settle from now on (the service is stopping)."""
        self._stopped = True
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        if self._stopped:  # an opening handed over before the stop
            return
        self._cancel()
        now = time.monotonic()
        self._timer = self._loop.call_later(max(self.quiet, self._settled_at + self.every - now), self.settle)

    def settle(self) -> int:
        """Collect, then freeze what is left (unfreezing first when a reclaim is due); returns the frozen count."""
        self._timer = None
        now = time.monotonic()
        due = self._closed or self._unreclaimed >= RECLAIM_AFTER
        reclaim = due and now >= self._reclaimed_at + self.reclaim_every
        if reclaim:
            gc.unfreeze()
            self._closed, self._reclaimed_at, self._unreclaimed = False, now, 0
            self.reclaims += 1
        frozen = freeze_startup_heap()
        log.info("%d objects frozen once tenants' databases opened (%s in %.0f ms)", frozen,
                 "the whole heap collected" if reclaim else "what was not frozen collected",
                 (time.monotonic() - now) * 1000)
        self._settled_at = time.monotonic()
        self.settles += 1
        self._unreclaimed += 1
        return frozen
