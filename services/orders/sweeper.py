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
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session

from cartwheel.contracts.base import utcnow
from cartwheel.service import Service
from cartwheel.settings import Settings
from cartwheel.statements import Statements
from cartwheel.tenants import context as tenant_context
from services.orders import store
from services.orders.claims import OrderBusy
from services.orders.retries import Retries

SWEEP_EVERY = 1.0  # seconds between looks for overdue and stalled orders while there is work
SWEEP_IDLE = 5.0  # seconds at most between looks when nothing is due sooner (stalled and refunding orders wait
# this long to be noticed; an unpaid order still expires within SWEEP_EVERY of its reservation's end)
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
        self.retries = Retries(self._give_up, not_tried=(OrderBusy,))  # a failing step backs off; put aside for good
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
        """Sweep the current tenant's orders; how long to wait before its next sweep (a quiet shop's: at most
        :data:`SWEEP_IDLE` s, or until its next order comes due)."""
        tenant, now = tenant_context.current(self.settings.tenant), utcnow()
        found = await self.look(tenant, functools.partial(
            store.to_sweep, now=now, stalled_before=now - timedelta(seconds=self.settings.checkout_resume_seconds),
            queued_before=now - timedelta(seconds=QUEUED_RESUME_S),
            cancels_after=self._cancels_after.get(tenant, "")))
        self._cancels_after[tenant] = found.uncancelled[-1] if found.uncancelled else ""  # the next sweep goes on
        listed = {*found.overdue, *found.stalled, *found.uncancelled, *found.refunding}
        self.retries.keep_only(listed)
        saga, stalled = self.saga, [order_id for order_id in found.stalled if order_id not in found.overdue]
        for orders, step in ((found.overdue, saga.expire), (stalled, saga.resume),
                             (found.uncancelled, saga.cancel_intent_again), (found.refunding, saga.refund_again)):
            for order_id in orders:
                await self._swept(order_id, step)
        return SWEEP_EVERY if listed else self._idle_wait(found.due)

    async def look(self, tenant: str, reads: Callable[[Session | Statements], store.ToSweep]) -> store.ToSweep:
        """What to sweep. A tenant whose SQLite file is closed here is read on a connection of its own, its database
        opened only for work: opening 4 quiet tenants' a second was most of an idle orders service's CPU."""
        found = await self.service.db.read_closed(tenant, reads)
        if found is not None and not found:
            return found
        # Open: on the read pool, not on the loop: a flash sale's unpaid orders make these reads a scan.
        return await self.service.db.read(reads)

    def _idle_wait(self, due: datetime | None) -> float:
        # A new order comes due a reservation's TTL after it is placed, so it is seen in time too.
        soonest = min(SWEEP_IDLE, float(self.settings.reservation_ttl_seconds))
        if due is not None:
            soonest = min(soonest, (due - utcnow()).total_seconds())
        return max(SWEEP_EVERY / 10, soonest)

    async def _swept(self, order_id: str, step: Callable[[str], Awaitable[Any]]) -> None:
        """One sweep step on an order this process holds for it; one another step holds waits for the next sweep."""
        async def held(order_id: str) -> None:
            async with self.saga.claims.held(order_id, wait=0):
                await step(order_id)

        await self.retries.attempt(order_id, held)

    async def _give_up(self, order_id: str, reason: str) -> None:
        with contextlib.suppress(OrderBusy):
            await self.saga.give_up(order_id, reason)
