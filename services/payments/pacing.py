"""Stripe's rate limit, kept on our side: calls go out at a steady rate, the buyer's first.

Stripe answers 429 beyond 100 operations a second in live mode (25 in test mode). A flash sale
that asked for an intent per checkout at once would meet that wall and fail its buyers; here
every call waits for its turn instead, in order of priority (a buyer confirming a payment before
an intent being made, both before cancels and refunds nobody waits for), and a 429 that comes
anyway (another system on the account) holds every call back for the time Stripe asks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

INTERACTIVE = 0  # a buyer or a webhook waits on it: confirm, read an intent
CHECKOUT = 1  # a checkout's new intent, while its buyer waits for the answer
BACKGROUND = 2  # nobody waits: a queued intent, a cancel, a refund
PRIORITIES = ("interactive", "checkout", "background")


class Pacer:
    """At most ``rate`` calls a second on average, ``burst`` at once; waiting calls go in priority order."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate / 10)  # a tenth of a second's worth at once
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._held_until = 0.0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def waiting(self, priority: int | None = None) -> int:
        """Calls waiting for their turn (of one priority, or all)."""
        return sum(1 for p, _, f in self._waiting if not f.done() and (priority is None or p == priority))

    def hold(self, seconds: float) -> None:
        """Stripe said 429 (retry after ``seconds``): no call goes out before then."""
        self._held_until = max(self._held_until, self._clock() + seconds)
        self._tokens = 0.0

    async def turn(self, priority: int, wait: float | None = None) -> bool:
        """Wait for this call's turn; False if it did not come within ``wait`` seconds (None: however long)."""
        if not self._waiting and self._take():
            return True
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), ready))
        self._schedule()
        try:
            await asyncio.wait_for(asyncio.shield(ready), wait)
            return True
        except TimeoutError:
            if ready.done() and not ready.cancelled():  # its turn came as the wait ran out: give it back
                self._tokens = min(self.burst, self._tokens + 1)
                self._schedule()
            ready.cancel()
            return False
        except asyncio.CancelledError:
            if ready.done() and not ready.cancelled():
                self._tokens = min(self.burst, self._tokens + 1)
                self._schedule()
            ready.cancel()
            raise

    def _take(self) -> bool:
        now = self._clock()
        if now < self._held_until:
            return False
        self._tokens = min(self.burst, self._tokens + (now - max(self._at, self._held_until)) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _schedule(self) -> None:
        """Hand out the turns due now, in priority order; wake again when the next one is."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and self._waiting[0][2].done():  # gave up waiting
            heapq.heappop(self._waiting)
        while self._waiting and self._take():
            _, _, ready = heapq.heappop(self._waiting)
            ready.set_result(None)
            while self._waiting and self._waiting[0][2].done():
                heapq.heappop(self._waiting)
        if self._waiting:
            now = self._clock()
            due = max(self._held_until - now, (1 - self._tokens) / self.rate, 0.0)
            self._timer = asyncio.get_running_loop().call_later(due, self._schedule)
