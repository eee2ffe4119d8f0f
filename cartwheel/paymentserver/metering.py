"""Counting API requests, and refusing those above a rate as Stripe does (429), for benchmarks (pure)."""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

_ID = re.compile(r"^(?:[a-z]+_(?=[A-Za-z0-9_]*[0-9A-Z])[A-Za-z0-9_]+|pm_card_\w+|tok_\w+)$")


def path_kind(method: str, path: str) -> str:
    """``POST /v1/payment_intents/pi_3Nx.../confirm`` → ``POST /v1/payment_intents/{id}/confirm``."""
    parts = ["{id}" if _ID.match(part) else part for part in path.split("/")]
    return f"{method} {'/'.join(parts)}"


class SlidingWindow:
    """At most ``per_second`` requests in any window of one second (or one per ``1 / per_second`` s when below 1).

    Exact where a token bucket lets twice the rate through in a burst: a benchmark reads the
    limit it set.
    """

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0:
            raise ValueError("the rate must be above 0")
        self.capacity = max(1, int(per_second))
        self.window = self.capacity / per_second
        self.clock = clock
        self.admitted: deque[float] = deque()

    def admit(self) -> float | None:
        """None when the request may go; else the seconds until one may."""
        now = self.clock()
        while self.admitted and self.admitted[0] <= now - self.window:
            self.admitted.popleft()
        if len(self.admitted) < self.capacity:
            self.admitted.append(now)
            return None
        return self.admitted[0] + self.window - now


class Stats:
    """What ``GET /_config/stats`` answers: API requests, those refused with 429, declines, webhooks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.limited: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def count(self, kind: str, *, rate_limited: bool = False) -> None:
        self.requests[kind] += 1
        if rate_limited:
            self.limited[kind] += 1

    def note(self, what: str) -> None:
        """``declined``, ``webhooks_delivered``, ``webhooks_failed``."""
        self.events[what] += 1

    def as_json(self, rate_limit: float | None) -> dict[str, Any]:
        return {
            "rate_limit": rate_limit,
            "requests": sum(self.requests.values()),
            "rate_limited": sum(self.limited.values()),
            "declined": self.events["declined"],
            "webhooks_delivered": self.events["webhooks_delivered"],
            "webhooks_failed": self.events["webhooks_failed"],
            "by_kind": {kind: {"requests": n, "rate_limited": self.limited[kind]}
                        for kind, n in sorted(self.requests.items())},
        }
