"""Wires the catalog service: products, prices, the KV read cache."""

from __future__ import annotations

from cartwheel import subjects
from cartwheel.contracts.catalog import (
    CreateProduct,
    GetProduct,
    ListProducts,
    ProductEvent,
    SetProductFile,
    SetProductImage,
    UpdateProduct,
)
from cartwheel.service import Service
from cartwheel.settings import Settings
from services.catalog.handlers import CatalogHandlers


def build(settings: Settings) -> Service:
    service = Service("catalog", settings)
    handlers = CatalogHandlers(service)
    service.on_start(handlers.open_cache)
    service.handle(subjects.CATALOG_PRODUCTS_CREATE, CreateProduct)(handlers.create_product)
    service.handle(subjects.CATALOG_PRODUCTS_UPDATE, UpdateProduct)(handlers.update_product)
    service.handle(subjects.CATALOG_PRODUCTS_SET_IMAGE, SetProductImage)(handlers.set_image)
    service.handle(subjects.CATALOG_PRODUCTS_SET_FILE, SetProductFile)(handlers.set_file)
    service.handle(subjects.CATALOG_PRODUCTS_GET, GetProduct)(handlers.get_product)
    service.handle(subjects.CATALOG_PRODUCTS_LIST, ListProducts)(handlers.list_products)
    service.consume(subjects.CATALOG_EVENTS, ProductEvent, durable="catalog-cache")(handlers.repair_cache)
    return service
