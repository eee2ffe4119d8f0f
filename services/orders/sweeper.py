"""The orders sweeper: expires orders whose reservation ran out unpaid, and finishes or cleans up what a crash or
an unreachable service left half-way (a stalled checkout, an intent not cancelled, a refund not finished).

It decides which order needs which step, and when; the saga (:mod:`services.orders.saga`) takes the step. Each
tenant's orders are swept in turn (:meth:`cartwheel.service.Service.every_tenant`): a busy one at the pace it asks,
a quiet one's without opening its database unless there is work (:meth:`Sweeper.look`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session

from cartwheel.contracts.base import utcnow
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.service import Service
from cartwheel.settings import Settings
from cartwheel.statements import Statements
from cartwheel.tenants import context as tenant_context
from services.orders import store
from services.orders.claims import OrderBusy

log = logging.getLogger("cartwheel.orders")

SWEEP_EVERY = 1.0  # seconds between looks for overdue and stalled orders while there is work
SWEEP_IDLE = 5.0  # seconds at most between looks when nothing is due sooner (stalled and refunding orders wait
# this long to be noticed; an unpaid order still expires within SWEEP_EVERY of its reservation's end)
SWEEP_BACKOFF_MAX = 300.0  # seconds a failing sweep step waits at most before its next try
SWEEP_GIVE_UP = 5  # tries of a step failing for good (no such payment at the provider) before a person decides
QUEUED_RESUME_S = 300.0  # an order whose queued intent was not announced this long is asked for again (a backstop)


class Claims(Protocol):
    def held(self, order_id: str, wait: float | None = None) -> AbstractAsyncContextManager[None]: ...


class Steps(Protocol):
    """The saga's steps the sweeper takes, each on an order it holds (:class:`services.orders.saga.Saga`)."""

    service: Service
    settings: Settings
    claims: Claims

    async def expire(self, order_id: str) -> None: ...
    async def resume(self, order_id: str) -> None: ...
    async def cancel_intent_again(self, order_id: str) -> None: ...
    async def refund_again(self, order_id: str) -> None: ...
    async def give_up(self, order_id: str, reason: str) -> None: ...


class Sweeper:
    """Goes round every tenant's orders (:meth:`sweep`), and takes each order found the step it needs."""

    def __init__(self, saga: Steps) -> None:
        self.saga = saga
        self.service = saga.service
        self.settings = saga.settings
        self._failures: dict[str, tuple[int, float]] = {}  # order id -> failed sweep steps, next try at
        self._cancels_after: dict[str, str] = {}  # per tenant: where the round of intents to cancel again goes on
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        rounds = self.service.every_tenant("orders sweep", self.sweep)
        self._task = asyncio.create_task(rounds.run_forever(first_wait=SWEEP_EVERY), name="orders-sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> float:
        """Sweep the current tenant's orders; how long to wait before its next sweep. An order another step holds
        is left for the next sweep. A quiet shop sweeps every :data:`SWEEP_IDLE` s, or when its next order comes
        due."""
        tenant = tenant_context.current(self.settings.tenant)
        now = utcnow()
        stalled_before = now - timedelta(seconds=self.settings.checkout_resume_seconds)
        found = await self.look(tenant, functools.partial(
            store.to_sweep, now=now, stalled_before=stalled_before,
            queued_before=now - timedelta(seconds=QUEUED_RESUME_S),
            cancels_after=self._cancels_after.get(tenant, "")))
        self._cancels_after[tenant] = found.uncancelled[-1] if found.uncancelled else ""  # the next sweep goes on
        listed, now_s = {*found.overdue, *found.stalled, *found.uncancelled, *found.refunding}, time.monotonic()
        self._failures = {o: (n, at) for o, (n, at) in self._failures.items()  # forget settled ones
                          if o in listed or now_s < at + SWEEP_BACKOFF_MAX}
        for order_id in found.overdue:
            await self._swept(order_id, self.saga.expire)
        for order_id in found.stalled:
            if order_id not in found.overdue:
                await self._swept(order_id, self.saga.resume)
        for order_id in found.uncancelled:
            await self._swept(order_id, self.saga.cancel_intent_again)
        for order_id in found.refunding:
            await self._swept(order_id, self.saga.refund_again)
        return SWEEP_EVERY if listed else self._idle_wait(found.due)

    async def look(self, tenant: str, reads: Callable[[Session | Statements], store.ToSweep]) -> store.ToSweep:
        """What to sweep. A tenant whose SQLite file is closed here is looked at on a connection of its own, and
        its database opened only if there is work: with 1,000 tenants registered, opening a quiet tenant's
        database (an engine, its statements compiled afresh, its outbox relay) 4 times a second for a sweep that
        found nothing was most of an idle orders service's CPU, and a tenth of a core beside 100 busy tenants."""
        found = await self.service.db.read_closed(tenant, reads)
        if found is not None and not found:
            return found
        # Open: through a session on the read pool, not on the loop as a lane's part: a flash sale's thousands of
        # orders awaiting payment make the overdue and next-due reads a scan of the orders holding stock.
        return await self.service.db.read(reads)

    def _idle_wait(self, due: datetime | None) -> float:
        # A new order comes due a reservation's TTL after it is placed, so it is seen in time too.
        soonest = min(SWEEP_IDLE, float(self.settings.reservation_ttl_seconds))
        if due is not None:
            soonest = min(soonest, (due - utcnow()).total_seconds())
        return max(SWEEP_EVERY / 10, soonest)

    async def _swept(self, order_id: str, step: Callable[[str], Awaitable[Any]]) -> None:
        """Run one sweep step on the order, unless it failed lately: a failing step waits twice as long
        after each failure, and one that fails for good (the provider has no such payment, ``not_found``)
        puts the order in ``needs_review`` after :data:`SWEEP_GIVE_UP` tries, instead of trying for ever."""
        failures, not_before = self._failures.get(order_id, (0, 0.0))
        if time.monotonic() < not_before:
            return
        try:
            async with self.saga.claims.held(order_id, wait=0):
                await step(order_id)
        except OrderBusy:
            return
        except (DomainError, ServiceUnavailable) as failure:
            failures += 1
            if isinstance(failure, DomainError) and failure.code == "not_found" and failures >= SWEEP_GIVE_UP:
                self._failures.pop(order_id, None)
                await self._given_up(order_id, failure)
                return
            wait = min(SWEEP_BACKOFF_MAX, SWEEP_EVERY * 2**failures)
            self._failures[order_id] = (failures, time.monotonic() + wait)
            log.log(logging.WARNING if failures == 1 else logging.INFO,
                    "order %s: sweep step failed (%s, %d times); trying again in %.0f s", order_id, failure, failures,
                    wait)
        else:
            self._failures.pop(order_id, None)

    async def _given_up(self, order_id: str, failure: DomainError) -> None:
        reason = f"the sweeper gave up after {SWEEP_GIVE_UP} tries: {failure.message}"
        log.error("order %s: %s", order_id, reason)
        with contextlib.suppress(OrderBusy):
            await self.saga.give_up(order_id, reason)
