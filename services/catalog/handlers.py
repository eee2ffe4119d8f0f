"""Catalog request handlers: decode (done by the runtime), call the store, record events, refresh the cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from cartwheel import subjects
from cartwheel.contracts.catalog import (
    CreateProduct,
    GetProduct,
    ListProducts,
    Product,
    ProductCreated,
    ProductEvent,
    ProductUpdated,
    SetProductFile,
    SetProductImage,
    UpdateProduct,
)
from cartwheel.errors import Invalid
from cartwheel.outbox import record_event
from cartwheel.service import Service
from services.catalog import search, store
from services.catalog.cache import ProductCache

Change = tuple[Product, Product, list[str]]  # the product before, after, and the fields that changed


class CatalogHandlers:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.db = service.db
        self.cache: ProductCache | None = None

    async def open_cache(self) -> None:
        self.cache = ProductCache(await self.service.js.key_value(subjects.CATALOG_CACHE_BUCKET))

    async def create_product(self, cmd: CreateProduct) -> dict[str, Any]:
        try:
            draft = cmd.draft.in_currency(self._currency(cmd.tenant))
        except ValidationError as exc:  # the price can't be charged in the shop's currency
            raise Invalid(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None

        def work(session: Session) -> Product:
            product = store.create_product(session, draft, cmd.tenant)
            record_event(session, ProductCreated(tenant=cmd.tenant, product=product, stock=draft.stock))
            return product

        product = await self.db.run(work)
        self.service.notify_outbox()
        await self._cache().replace(cmd.tenant, product, previous_sku=None)
        return product.model_dump(mode="json")

    def _currency(self, tenant: str) -> str:
        """The shop's currency: the tenant's setting (``cartwheel tenants set NAME currency=USD``), else the
        installation's (``CARTWHEEL_CURRENCY``)."""
        entry = self.service.tenants.entry(tenant)
        return str(entry.settings.get("currency")) if entry and entry.settings.get("currency") else \
            self.service.settings.currency

    async def update_product(self, cmd: UpdateProduct) -> dict[str, Any]:
        return await self._change(cmd.tenant, lambda s: store.update_product(s, cmd.product_id, cmd.patch))

    async def set_image(self, cmd: SetProductImage) -> dict[str, Any]:
        return await self._change(cmd.tenant, lambda s: store.set_image(s, cmd.product_id, cmd.etag, cmd.content_type))

    async def set_file(self, cmd: SetProductFile) -> dict[str, Any]:
        return await self._change(cmd.tenant, lambda s: store.set_file(s, cmd.product_id, cmd.file))

    async def _change(self, tenant: str, change: Callable[[Session], Change]) -> dict[str, Any]:
        def work(session: Session) -> tuple[Product, Product]:
            before, after, changed = change(session)
            if changed:
                record_event(session, ProductUpdated(tenant=tenant, product=after, changed=changed))
            return before, after

        before, product = await self.db.run(work)
        self.service.notify_outbox()
        await self._cache().replace(tenant, product, previous_sku=before.sku)
        return product.model_dump(mode="json")

    async def get_product(self, query: GetProduct) -> dict[str, Any]:
        product = await self.db.read(lambda s: store.get_product(s, query.id_or_sku))
        await self._cache().fill(query.tenant, product)
        return product.model_dump(mode="json")

    async def list_products(self, query: ListProducts) -> dict[str, Any]:
        page = await self.db.read(lambda s: search.list_products(s, query))
        return page.model_dump(mode="json")

    async def repair_cache(self, event: ProductEvent) -> None:
        """Every change reaches the cache even if the write after commit was lost (a crash, a NATS blip)."""
        await self._cache().replace(event.tenant, event.product)

    def _cache(self) -> ProductCache:
        assert self.cache is not None, "cache opens at service start"
        return self.cache
