"""Inventory handlers: queries read stored stock; commands go into the product's lane, where the rules run."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from cartwheel import subjects
from cartwheel.contracts.catalog import ProductCreated
from cartwheel.contracts.inventory import GetStock, GetStocks, InitStock, Restock, SetStock, StockCommand, StockLevels
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes.client import LaneClient
from cartwheel.service import Service
from services.inventory import store

log = logging.getLogger("cartwheel.inventory")


class InventoryHandlers:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.db = service.db
        # Under the gateway's wait, so a slow lane is a clear 503 here rather than a timeout there.
        self.lane_timeout = service.settings.request_timeout * 0.8
        self.lane: LaneClient | None = None

    async def open_lane(self) -> None:
        self.lane = LaneClient(self.service.broker.connection, subjects.INVENTORY_LANE)
        await self.lane.start()

    async def close_lane(self) -> None:
        if self.lane is not None:
            await self.lane.close()

    async def get_stock(self, query: GetStock) -> dict[str, Any]:
        (level,) = await self.db.read(lambda s: store.stock_levels(s, [query.product_id]))
        return level.model_dump()

    async def get_stocks(self, query: GetStocks) -> dict[str, Any]:
        items = await self.db.read(lambda s: store.stock_levels(s, query.product_ids))
        return StockLevels(items=items).model_dump()

    async def restock(self, cmd: Restock) -> dict[str, Any]:
        return await self.send(cmd)

    async def set_stock(self, cmd: SetStock) -> dict[str, Any]:
        return await self.send(cmd)

    async def track_product(self, event: ProductCreated) -> None:
        """A new product gets its stock row; the event id is the command id, so a redelivery changes nothing."""
        try:
            init = InitStock(id=event.id, tenant=event.tenant, product_id=event.product.id, stock=event.stock)
            await self.apply(init)
        except (ValidationError, DomainError) as refusal:  # final: another delivery would be refused the same
            log.error("product %s gets no stock row: %s", event.product.id, refusal)
        # ServiceUnavailable propagates, so the event is delivered again.

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
