"""Inventory handlers: queries read stored stock; commands go into the product's lane, where the rules run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from functools import partial
from typing import Any

from faststream.exceptions import NackMessage
from pydantic import ValidationError

from cartwheel import subjects
from cartwheel.contracts.catalog import ProductCreated
from cartwheel.contracts.inventory import (
    GetStock,
    GetStocks,
    InitStock,
    Restock,
    SetStock,
    StockCommand,
    StockEvent,
    StockLevels,
)
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes.client import LaneClient
from cartwheel.service import Service
from cartwheel.tenants import context
from services.inventory import store
from services.inventory.availability import StockBoard
from services.inventory.state import Counts

log = logging.getLogger("cartwheel.inventory")

REPAIR_PAGE = 500
RETRY_AFTER_S = 1  # a stock event whose entry couldn't be written comes back this much later


class InventoryHandlers:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.db = service.db
        # Under the gateway's wait, so a slow lane is a clear 503 here rather than a timeout there.
        self.lane_timeout = service.settings.request_timeout * 0.8
        self.lane: LaneClient | None = None
        self.board: StockBoard | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def open_lane(self) -> None:
        self.lane = LaneClient(self.service.broker.connection, subjects.INVENTORY_LANE)
        await self.lane.start()

    async def close_lane(self) -> None:
        if self.lane is not None:
            await self.lane.close()

    async def open_board(self) -> None:
        """The stock bucket's writer; entries missing from it (a new or emptied bucket) are written again."""
        self.board = StockBoard(await self.service.js.key_value(subjects.INVENTORY_STOCK_BUCKET))
        self._background(self.repair_board())

    async def close_board(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def get_stock(self, query: GetStock) -> dict[str, Any]:
        entries = await self.db.read(lambda s: store.stock_entries(s, [query.product_id]))
        entry = entries.get(query.product_id)
        if entry is None:
            return Counts().level(query.product_id).model_dump()
        # Readers ask here when the bucket lacks the product: put it there (in the background, once a second at most).
        self._background(self._stock_board().fill(query.tenant, entry))
        return entry.level().model_dump()

    async def get_stocks(self, query: GetStocks) -> dict[str, Any]:
        items = await self.db.read(lambda s: store.stock_levels(s, query.product_ids))
        return StockLevels(items=items).model_dump()

    async def restock(self, cmd: Restock) -> dict[str, Any]:
        reply = await self.send(cmd)
        await self.publish_now(cmd.tenant, cmd.product_id)
        return reply

    async def set_stock(self, cmd: SetStock) -> dict[str, Any]:
        reply = await self.send(cmd)
        await self.publish_now(cmd.tenant, cmd.product_id)
        return reply

    async def publish_now(self, tenant: str, product_id: str) -> None:
        """An admin's change is in the stock bucket before the answer, so the next read sees it (the event is later)."""
        try:
            entries = await self.db.read(lambda s: store.stock_entries(s, [product_id]))
            if entry := entries.get(product_id):
                await self._stock_board().write(tenant, entry)
        except Exception as error:  # the stock event writes it a moment later
            log.info("stock entry of %s not written at once: %r", product_id, error)

    async def track_product(self, event: ProductCreated) -> None:
        """A new product gets its stock row; the event id is the command id, so a redelivery changes nothing."""
        try:
            init = InitStock(id=event.id, tenant=event.tenant, product_id=event.product.id, stock=event.stock)
            await self.apply(init)
        except (ValidationError, DomainError) as refusal:  # final: another delivery would be refused the same
            log.error("product %s gets no stock row: %s", event.product.id, refusal)
        # ServiceUnavailable propagates, so the event is delivered again.

    async def publish_stock(self, event: StockEvent) -> None:
        """After a stock change, the product's entry in the stock bucket: the stored stock, which is the newest.

        Any event of the product will do, and a late one writes nothing (its version is not newer).
        Under load one read finds many changes applied: the events they caused are then skipped
        without a read. An entry that can't be written now gets the event back later rather than
        lose the change.
        """
        if event.version is not None and self._stock_board().holds(event.tenant, event.product_id, event.version):
            return
        try:
            entries = await self.db.read(lambda s: store.stock_entries(s, [event.product_id]))
            if entry := entries.get(event.product_id):
                await self._stock_board().write(event.tenant, entry)
        except Exception as error:
            log.warning("stock entry of %s not written (%r); event %s comes back", event.product_id, error, event.id)
            raise NackMessage(delay=RETRY_AFTER_S) from None

    async def repair_board(self) -> None:
        """Write every product's stock the bucket lacks; what it has is kept current by the stock events."""
        board = self._stock_board()
        tenant = context.current(self.service.settings.tenant)  # at start: the installation's own
        present = await board.keys()
        after: str | None = None
        written = 0
        while page := await self.db.read(partial(store.stock_entries_after, after=after, limit=REPAIR_PAGE)):
            for entry in page:
                if subjects.inventory_stock_key(tenant, entry.product_id) not in present:
                    written += await board.write(tenant, entry)
            after = page[-1].product_id
        if written:
            log.info("stock bucket: %d missing entries written", written)

    async def send(self, cmd: StockCommand) -> dict[str, Any]:
        """Apply ``cmd`` for a request; a lane that doesn't answer is a 503 the caller may retry."""
        try:
            return await self.apply(cmd)
        except ServiceUnavailable as error:
            message = f"stock of {cmd.product_id} is not answering: {error.reason}"
            raise DomainError(message, code="service_unavailable") from None

    async def apply(self, cmd: StockCommand) -> dict[str, Any]:
        assert self.lane is not None, "the lane client opens at service start"
        body = cmd.model_dump(mode="json")
        return await self.lane.call(cmd.product_id, cmd.kind, body, command_id=cmd.id, timeout=self.lane_timeout)

    def _stock_board(self) -> StockBoard:
        assert self.board is not None, "the stock board opens at service start"
        return self.board

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("stock bucket upkeep failed: %r", task.exception())
