"""One saga step at a time per order: a lock in this process, and a claim in the order's row across replicas
that lapses if its holder dies (only a dead holder's claim lapses: a live one renews it while it works)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta

from cartwheel import subjects
from cartwheel.contracts.base import utcnow
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.keyedlock import KeyedLocks
from cartwheel.service import Service
from services.orders import store

log = logging.getLogger("cartwheel.orders")

CLAIM_TTL = 10.0  # seconds a claim lasts unless renewed: its holder renews it while working, so only a dead
# holder's claim lapses, and then another replica may go on with the order
CLAIM_POLL = 0.05


class OrderBusy(ServiceUnavailable):
    """Another saga step holds the order (here or in another replica) longer than the caller waits."""

    def __init__(self, order_id: str) -> None:
        super().__init__(subjects.ORDERS_CHECKOUT, f"order {order_id} is busy; try again")


class Claims:
    """Orders held by this process (``worker``, one of the service's replicas) for a saga step each."""

    def __init__(self, service: Service, worker: str, wait: float) -> None:
        self.service = service
        self.worker = worker
        self.wait = wait  # how long a step waits for an order another holds, unless it says otherwise
        self._locks = KeyedLocks()

    @contextlib.asynccontextmanager
    async def held(self, order_id: str, wait: float | None = None) -> AsyncIterator[None]:
        """Hold the order for one saga step: one step at a time per order, in this process (a lock) and
        across replicas (a claim in its row, which lapses after :data:`CLAIM_TTL` if its holder died).

        :class:`OrderBusy` (a 503 to callers; an event comes back later) if it stays taken ``wait`` seconds.
        """
        if wait == 0 and self._locks.locked(order_id):
            raise OrderBusy(order_id)
        async with self._locks.hold(order_id):
            await self._claim(order_id, self.wait if wait is None else wait)
            renewal = asyncio.create_task(self._renew(order_id), name=f"claim-{order_id}")
            try:
                yield
            finally:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
                await self.service.db.run(lambda s: store.release_claim(s, order_id, self.worker))

    async def _renew(self, order_id: str) -> None:
        while True:
            await asyncio.sleep(CLAIM_TTL / 3)
            now = utcnow()
            extend = functools.partial(store.claim, order_id=order_id, worker=self.worker, now=now,
                                       until=now + timedelta(seconds=CLAIM_TTL))
            try:
                await self.service.db.run(extend)
            except Exception as exc:  # the database is struggling: the claim may lapse, the versions still guard
                log.warning("order %s: claim not renewed (%s)", order_id, exc)

    async def _claim(self, order_id: str, wait: float) -> None:
        deadline, first = time.monotonic() + wait, True
        while True:
            now = utcnow()
            take = functools.partial(store.claim, order_id=order_id, worker=self.worker, now=now,
                                     until=now + timedelta(seconds=CLAIM_TTL))
            if await self.service.db.run(take):
                return
            if first and await self.service.db.read(lambda s: store.load(s, order_id)) is None:
                raise DomainError(f"no order {order_id}", code="not_found", order_id=order_id)
            first = False
            if time.monotonic() >= deadline:
                raise OrderBusy(order_id)
            await asyncio.sleep(CLAIM_POLL)
