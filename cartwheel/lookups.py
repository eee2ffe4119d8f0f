"""A product and its stock without a round trip: in-process copies of the catalog's and inventory's
KV buckets, kept by watches A key not (yet) in a copy is asked for as before. The cart prices its
lines with them, and checkout prices its orders. Keys start with a tenant's name: a message's tenant
reads only its own.

A copy can trail its bucket by the time a watch takes to deliver (about a millisecond here), or
longer when its watch was lost and not yet noticed. A stock figure that old is fine for a cart,
since checkout reserves in inventory's lane; so is a product for a cart, since checkout prices and
checks every line again. Checkout reads a product ``current``: not until the copy holds every
write its bucket had when the read began (:meth:`KvMirror.current`, one server request per batch
of reads). The catalog writes a change into its bucket before it answers it, so a product an
admin deactivated or repriced is refused or repriced by the very next checkout, whichever replica
answers it. Cart adds don't wait for that: at the rates a cart sees, a round serves about one
read, and it cost 15 % of add-to-cart throughput (bench, same run).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from nats.aio.client import Client as NatsClient

from cartwheel import subjects
from cartwheel.bus import request
from cartwheel.contracts.base import Message
from cartwheel.contracts.catalog import GetProduct, Product
from cartwheel.contracts.inventory import GetStock, StockLevel
from cartwheel.kvmirror import KvMirror

CATCH_UP = 0.1  # seconds a product read waits for the copy to receive what its bucket already has
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _catalog_entry(key: str, value: bytes) -> Product | str:
    """A product by its id, or a sku entry's product id."""
    return Product.model_validate_json(value) if subjects.is_catalog_product_key(key) else value.decode()


def _available(key: str, value: bytes) -> int:
    return StockLevel.model_validate_json(value).available


class Lookups:
    def __init__(self, client: Callable[[], NatsClient], timeout: float) -> None:
        self._client = client
        self.timeout = timeout
        self.catalog: KvMirror[Product | str] = KvMirror(subjects.CATALOG_CACHE_BUCKET, client, _catalog_entry)
        self.stock: KvMirror[int] = KvMirror(subjects.INVENTORY_STOCK_BUCKET, client, _available)

    def start(self) -> None:
        self.catalog.start()
        self.stock.start()

    async def stop(self) -> None:
        await self.catalog.stop()
        await self.stock.stop()

    async def product(self, id_or_sku: str, cause: Message, *, current: bool) -> Product:
        """The product (active or not) from the catalog's bucket, else from the catalog.

        ``current``: as the bucket was when this call began, not as the copy last heard it.
        """
        usable = self.catalog.synced and (not current or await self.catalog.current(self._client(), CATCH_UP))
        found = self._cached_product(cause.tenant, id_or_sku) if usable else None
        if found is not None:
            return found
        query = GetProduct(tenant=cause.tenant, id_or_sku=id_or_sku)
        return Product.model_validate(await request(self._client(), query, self.timeout))

    async def available(self, product_id: str, cause: Message) -> int:
        """Units of the product that can be bought, from inventory's bucket, else from inventory."""
        found = self.stock.get(subjects.inventory_stock_key(cause.tenant, product_id)) if self.stock.synced else None
        if found is not None:
            return found
        query = GetStock(tenant=cause.tenant, product_id=product_id)
        return StockLevel.model_validate(await request(self._client(), query, self.timeout)).available

    def _cached_product(self, tenant: str, id_or_sku: str) -> Product | None:
        """A sku goes through its index entry, which may be stale after a sku change: the product must carry it."""
        if UUID.match(id_or_sku):
            found = self.catalog.get(subjects.catalog_cache_key(tenant, id_or_sku))
            return found if isinstance(found, Product) else None
        product_id = self.catalog.get(subjects.catalog_sku_key(tenant, id_or_sku))
        if not isinstance(product_id, str):
            return None
        found = self.catalog.get(subjects.catalog_cache_key(tenant, product_id))
        return found if isinstance(found, Product) and found.sku == id_or_sku else None
