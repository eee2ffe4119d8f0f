"""A sweep step that fails is tried again later and later, and one that fails for good is put before a person.

The sweeper (:mod:`services.orders.sweeper`) takes each order it finds the step it needs at every sweep; without
this, a step the provider refuses for good (it has no such payment) was tried once a second for ever, a warning
each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from cartwheel.errors import DomainError, ServiceUnavailable

log = logging.getLogger("cartwheel.orders")

BACKOFF_FIRST = 2.0  # seconds a step that failed once waits before its next try, doubling with each failure ...
BACKOFF_MAX = 300.0  # ... up to this
GIVE_UP = 5  # tries of a step failing for good (``not_found`` at the provider) before a person decides

Step = Callable[[str], Awaitable[Any]]


class Retries:
    """Each order's failed sweep steps: how many, and when the next try may come. ``give_up(order_id, reason)``
    puts an order aside whose step failed for good :data:`GIVE_UP` times; a step that raises one of ``not_tried``
    (the order is busy with another step, say) was not taken: its count and wait stay as they were."""

    def __init__(self, give_up: Callable[[str, str], Awaitable[None]], *,
                 not_tried: tuple[type[Exception], ...] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self.give_up = give_up
        self.not_tried = not_tried
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # order id -> failed tries, next try not before

    def failures(self, order_id: str) -> int:
        """How many tries of the order's step failed since it last succeeded (0: none, or forgotten)."""
        return self._failures.get(order_id, (0, 0.0))[0]

    def keep_only(self, listed: Iterable[str]) -> None:
        """Forget the orders a sweep no longer lists (settled meanwhile), once their back-off has run out."""
        listed, now = set(listed), self.clock()
        self._failures = {o: (n, at) for o, (n, at) in self._failures.items() if o in listed or now < at + BACKOFF_MAX}

    async def attempt(self, order_id: str, step: Step) -> None:
        """Take ``step`` on the order unless it failed lately. A refusal (:class:`DomainError`) or an unreachable
        service counts as a failure; any other error is the caller's."""
        failures, not_before = self._failures.get(order_id, (0, 0.0))
        if self.clock() < not_before:
            return
        try:
            await step(order_id)
        except self.not_tried:
            return
        except (DomainError, ServiceUnavailable) as failure:
            failures += 1
            if isinstance(failure, DomainError) and failure.code == "not_found" and failures >= GIVE_UP:
                self._failures.pop(order_id, None)
                reason = f"the sweeper gave up after {GIVE_UP} tries: {failure.message}"
                log.error("order %s: %s", order_id, reason)
                await self.give_up(order_id, reason)
                return
            wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
            self._failures[order_id] = (failures, self.clock() + wait)
            log.log(logging.WARNING if failures == 1 else logging.INFO,
                    "order %s: sweep step failed (%s, %d times); trying again in %.0f s", order_id, failure, failures,
                    wait)
        else:
            self._failures.pop(order_id, None)
