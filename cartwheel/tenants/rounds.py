"""Background work done for every tenant (the orders sweeper, say): each tenant on a schedule of its own."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from cartwheel.tenants import context
from cartwheel.tenants.databases import TenantDatabases, UnknownTenant

log = logging.getLogger(__name__)

IDLE_EVERY_S = 60.0
"""A tenant whose databases are not open here (no recent work in this process) gets a round at most this often..."""
IDLE_ROUNDS_PER_S = 4.0
"""... and quiet tenants together at most this many rounds a second (1,000 of them: each every 250 s)."""
LOOK_EVERY_S = 1.0  # the longest sleep: a tenant registered meanwhile is seen within this


class TenantRounds:
    """Runs ``work()`` in each tenant's context (:mod:`cartwheel.tenants.context`), one tenant at a time: the
    installation's own tenant and every tenant whose database is open at the pace ``work`` asks (it returns the
    seconds until its next round), every other one of ``tenants()`` at least every :data:`IDLE_EVERY_S`."""

    def __init__(self, what: str, databases: TenantDatabases, tenants: Callable[[], list[str]],
                 work: Callable[[], Awaitable[float]]) -> None:
        self.what = what
        self.databases = databases
        self.tenants = tenants
        self.work = work
        self._due: list[tuple[float, str]] = []
        self._known: set[str] = set()
        self._quiet: deque[str] = deque()  # quiet tenants whose round is due, in turn ...
        self._quiet_at = 0.0  # ... the next of which starts no sooner (IDLE_ROUNDS_PER_S)

    def _refresh(self, now: float) -> None:
        wanted = {self.databases.own_name, *self.tenants()}
        for tenant in wanted - self._known:  # new: a first round now
            heapq.heappush(self._due, (now, tenant))
        self._known = wanted  # gone ones are dropped when they come up

    async def run_forever(self, first_wait: float = 0.0) -> None:
        """Quiet tenants' rounds together keep to :data:`IDLE_ROUNDS_PER_S`, the first ones after a start too, and
        the list of tenants is read once a :data:`LOOK_EVERY_S`. Seen before: every first round was due at once, the
        list (1,000 tenants) was read before each round, and with 1,000 registered each service spent a quarter of a
        core on upkeep, the whole shop most of the machine's two, for as long as it ran."""
        await asyncio.sleep(first_wait)
        refreshed = -math.inf
        while True:
            now = time.monotonic()
            if now >= refreshed + LOOK_EVERY_S:
                self._refresh(now)
                refreshed = now
            while self._due and self._due[0][0] <= now and not self.databases.busy(self._due[0][1]):
                if (quiet := heapq.heappop(self._due)[1]) in self._known:
                    self._quiet.append(quiet)
            if self._quiet and now >= self._quiet_at:  # first: busy tenants' rounds must not starve quiet ones
                tenant = self._quiet.popleft()
                self._quiet_at = now + 1 / IDLE_ROUNDS_PER_S
            elif self._due and self._due[0][0] <= now:
                _, tenant = heapq.heappop(self._due)
            else:
                wake = min(refreshed + LOOK_EVERY_S, self._due[0][0] if self._due else math.inf,
                           self._quiet_at if self._quiet else math.inf)
                await asyncio.sleep(max(0.0, wake - now))
                continue
            if tenant not in self._known:
                continue
            heapq.heappush(self._due, (time.monotonic() + await self._round(tenant), tenant))

    async def _round(self, tenant: str) -> float:
        """One round for ``tenant``; the seconds until its next one."""
        open_here = self.databases.busy(tenant)
        with context.serving(tenant, background=not open_here):
            try:
                wait = await self.work()
            except UnknownTenant:
                return IDLE_EVERY_S  # registered, its databases not made yet (or being deleted)
            except Exception:
                log.exception("%s failed for tenant %s; trying again", self.what, tenant)
                return min(5.0, IDLE_EVERY_S)
        return wait if open_here else max(wait, IDLE_EVERY_S, len(self._known) / IDLE_ROUNDS_PER_S)
