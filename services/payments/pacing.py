"""Stripe's rate limit, kept on our side: calls go out at a steady rate, the buyer's first.

Stripe answers 429 beyond 100 operations a second in live mode (25 in test mode). A flash sale
that asked for an intent per checkout at once would meet that wall and fail its buyers; here
every call waits for its turn instead, in order of priority (a buyer confirming a payment before
an intent being made, both before cancels and refunds nobody waits for), though never for ever:
a call kept waiting a second goes before younger ones. A 429 that comes anyway (another system
on the account) holds every call back for the time Stripe asks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

INTERACTIVE = 0  # a buyer or a webhook waits on it: confirm, read an intent
CHECKOUT = 1  # a checkout's new intent, while its buyer waits for the answer
BACKGROUND = 2  # nobody waits: a queued intent, a cancel, a refund
PRIORITIES = ("interactive", "checkout", "background")
AGE_S = 1.0  # a call kept waiting this long goes before younger ones, whatever their priority


class Pacer:
    """At most ``rate`` calls in any one second, ``burst`` of them at once (the bucket refills at ``rate - burst``
    a second, so a burst and a second's refill together never exceed ``rate``: Stripe counts what arrives in a
    second). Waiting calls go in priority order, except that one kept waiting :data:`AGE_S` goes before younger
    calls of any priority (nobody waits for ever)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = rate
        self.burst = max(1.0, min(burst if burst is not None else rate / 10, rate / 2))  # a tenth of a second's
        # Below 2 a second a call is a burst of its own: the refill is the rate (one call over it, at most).
        self.refill = rate - self.burst if rate - self.burst >= rate / 2 else rate
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._held_until = 0.0
        self._waiting: tuple[deque[Waiter], ...] = tuple(deque() for _ in PRIORITIES)
        self._timer: asyncio.TimerHandle | None = None

    def waiting(self, priority: int | None = None) -> int:
        """Calls waiting for their turn (of one priority, or all)."""
        queues = self._waiting if priority is None else (self._waiting[priority],)
        return sum(1 for queue in queues for waiter in queue if not waiter.ready.done())

    def hold(self, seconds: float) -> None:
        """Stripe said 429 (retry after ``seconds``): no call goes out before then."""
        self._held_until = max(self._held_until, self._clock() + seconds)
        self._tokens = 0.0

    async def turn(self, priority: int, wait: float | None = None) -> bool:
        """Wait for this call's turn; False if it did not come within ``wait`` seconds (None: however long)."""
        if not any(self._waiting) and self._take():
            return True
        waiter = Waiter(self._clock(), asyncio.get_running_loop().create_future())
        self._waiting[priority].append(waiter)
        self._schedule()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.ready), wait)
            return True
        except (TimeoutError, asyncio.CancelledError) as gave_up:
            if waiter.ready.done() and not waiter.ready.cancelled():  # its turn came as it gave up: give it back
                self._tokens = min(self.burst, self._tokens + 1)
            waiter.ready.cancel()
            self._forget_gone()
            self._schedule()
            if isinstance(gave_up, asyncio.CancelledError):
                raise
            return False

    def _take(self) -> bool:
        now = self._clock()
        if now < self._held_until:
            return False
        self._tokens = min(self.burst, self._tokens + (now - max(self._at, self._held_until)) * self.refill)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _forget_gone(self) -> None:
        for queue in self._waiting:
            while queue and queue[0].ready.done():
                queue.popleft()

    def _next(self) -> deque[Waiter] | None:
        """The queue whose first call goes next: the oldest one kept waiting AGE_S, else the highest priority."""
        self._forget_gone()
        heads = [queue for queue in self._waiting if queue]
        if not heads:
            return None
        aged = [queue for queue in heads if self._clock() - queue[0].since >= AGE_S]
        return min(aged, key=lambda queue: queue[0].since) if aged else heads[0]

    def _schedule(self) -> None:
        """Hand out the turns due now; wake again when the next one is."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while (queue := self._next()) is not None and self._take():
            queue.popleft().ready.set_result(None)
        if self._next() is not None:
            now = self._clock()
            due = max(self._held_until - now, (1 - self._tokens) / self.refill, 0.0)
            self._timer = asyncio.get_running_loop().call_later(due, self._schedule)


@dataclass(frozen=True)
class Waiter:
    since: float
    ready: asyncio.Future[None]
