"""The collector and a started process: what lives as long as the process, or as a tenant's open database, is frozen
out of the collector's full runs.

A started service holds about 130,000 objects that live as long as it does (modules, classes, the pydantic-core
validators of every contract, SQLAlchemy's tables). Python's cyclic collector visits all of them in each full
collection: about 95 ms here, and under load one came every second or so (objects alive during younger collections
count towards the next full one), ~15 % of the orders service's CPU in a sold-out sale. Frozen, they are skipped.
A tenant's database opened later (its engine, pools, compiled statements, outbox relay) lives as long as it stays
open: :class:`HeapSettler` freezes those too, once openings settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def collect_and_freeze() -> int:
    """Collect what is not frozen, then freeze the rest; returns how many objects are now frozen. A frozen object
    that becomes garbage is freed by reference counting only: if cyclic, it stays (with all it refers to) until
    :func:`gc.unfreeze`."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def freeze_startup_heap() -> int:
    """:func:`collect_and_freeze` once the process is ready (after imports, connections, subscriptions). What
    starting up made and does not live for the whole process, and is cyclic, stays: e.g. the first NATS
    connection's transport, replaced after a reconnect (once per process; bounded)."""
    return collect_and_freeze()


SETTLE_QUIET_S = 1.0
"""How long after the last database opened or closed the heap is settled: a burst of tenants opening, once."""
SETTLE_EVERY_S = 5.0
"""Settled at most this often: a settle costs one full collection of the unfrozen heap (the log line and the
``cartwheel_gc_pause_seconds`` of generation 2 count it), which under load came every few seconds anyway."""
RECLAIM_EVERY_S = 600.0
"""A settle unfreezes everything first (a full collection of the whole heap: 0.12 s with 100 tenants open in the
cart service here) at most this often."""
RECLAIM_AFTER = 20
"""... and only once a database has closed, or after this many settles."""


class HeapSettler:
    """Freezes what a service opened after it started, once openings and closings settle.

    With 100 busy tenants the cart service held ~100,000 objects outside the frozen startup heap, and each full
    collection visited them: 56-88 ms with the loop stopped, every 4-5 s under load, where one shop's took 5-12 ms.
    A settle (``quiet`` s after the last opening or closing, at most every ``every`` s) collects the unfrozen heap
    and freezes what is left.

    What was frozen alive and later becomes cyclic garbage (a closed tenant's engine, a task in flight at the
    settle) stays, with everything it refers to, until a reclaim: a settle that unfreezes first. A closed database
    owes one, and so do ``reclaim_after`` settles; it comes at most every ``reclaim_every`` s, by a settle of its
    own when no opening brings one. Until then what stays is bounded by what the settles of ``reclaim_every``
    froze. :meth:`opened` and :meth:`closed` may be called from any thread, and do nothing once stopped."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, quiet: float = SETTLE_QUIET_S,
                 every: float = SETTLE_EVERY_S, reclaim_every: float = RECLAIM_EVERY_S,
                 reclaim_after: int = RECLAIM_AFTER) -> None:
        self._loop = loop
        self.quiet, self.every, self.reclaim_every, self.reclaim_after = quiet, every, reclaim_every, reclaim_after
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._settled_at = -math.inf
        self._reclaimed_at = time.monotonic()
        self._closed = False  # a database closed since the last reclaim
        self._unreclaimed = 0  # settles since the last reclaim
        self.settles = self.reclaims = 0

    def opened(self) -> None:
        """A database opened: settle once openings have been quiet a while."""
        self._post(self._schedule)

    def closed(self) -> None:
        """A database closed: what it left frozen is freed by the next reclaim."""
        self._post(self._note_closed)

    def stop(self) -> None:
        """No settle from now on (the service is stopping)."""
        self._stopped = True
        self._cancel()

    def settle(self) -> int:
        """Collect, then freeze what is left (unfreezing first when a reclaim is due); returns the frozen count."""
        self._timer = None
        started = time.monotonic()
        reclaim = self._owed() and started >= self._reclaimed_at + self.reclaim_every
        if reclaim:
            gc.unfreeze()
            self._closed, self._reclaimed_at, self._unreclaimed = False, started, 0
            self.reclaims += 1
        frozen = collect_and_freeze()
        self._settled_at = time.monotonic()
        self.settles += 1
        self._unreclaimed += not reclaim
        log.info("%d objects frozen once tenants' databases opened or closed (%s collected in %.0f ms)", frozen,
                 "the whole heap" if reclaim else "what was not frozen", (self._settled_at - started) * 1000)
        if self._owed() and not self._stopped:  # not due yet: a settle of its own then, if no opening comes first
            self._timer = self._loop.call_later(self._reclaimed_at + self.reclaim_every - self._settled_at,
                                                self.settle)
        return frozen

    def _owed(self) -> bool:
        return self._closed or self._unreclaimed >= self.reclaim_after

    def _post(self, callback: Callable[[], None]) -> None:
        if self._stopped:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the service is gone
            self._loop.call_soon_threadsafe(callback)

    def _note_closed(self) -> None:
        self._closed = True
        self._schedule()

    def _schedule(self) -> None:
        if self._stopped:  # handed over before the stop
            return
        self._cancel()
        self._timer = self._loop.call_later(max(self.quiet, self._settled_at + self.every - time.monotonic()),
                                            self.settle)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
