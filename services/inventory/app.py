"""Wires the inventory service: one lane key per product, stock queries, admin stock commands."""

from __future__ import annotations

from cartwheel import subjects
from cartwheel.contracts.catalog import ProductCreated
from cartwheel.contracts.inventory import GetStock, GetStocks, Restock, SetStock, StockEvent
from cartwheel.lanes.runtime import LaneRuntime
from cartwheel.service import Service
from cartwheel.settings import Settings
from services.inventory.domain import LANE
from services.inventory.handlers import InventoryHandlers


def build(settings: Settings) -> Service:
    service = Service("inventory", settings)
    LaneRuntime(service, LANE)
    handlers = InventoryHandlers(service)
    service.on_start(handlers.open_lane)
    service.on_stop(handlers.close_lane)
    service.on_start(handlers.open_board)
    service.on_stop(handlers.close_board)
    service.handle(subjects.INVENTORY_STOCK_GET, GetStock)(handlers.get_stock)
    service.handle(subjects.INVENTORY_STOCKS_GET, GetStocks)(handlers.get_stocks)
    service.handle(subjects.INVENTORY_RESTOCK, Restock)(handlers.restock)
    service.handle(subjects.INVENTORY_SET_STOCK, SetStock)(handlers.set_stock)
    service.consume(subjects.CATALOG_PRODUCT_CREATED, ProductCreated, durable="inventory-products")(
        handlers.track_product
    )
    service.consume(subjects.INVENTORY_EVENTS, StockEvent, durable="inventory-stock-board")(handlers.publish_stock)
    return service
