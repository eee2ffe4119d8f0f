"""The catalog's read cache in a NATS KV bucket (the edge design's KV): product JSON by id, each key
starting with its tenant's name (one bucket serves every tenant).

Reads fill it on a miss with ``create`` (never overwriting); every change writes the new
version with compare-and-set, keeping the highest ``version``, so a slow fill can never
put an older product back over a newer one.

A second kind of entry maps a sku to its product id. It may be stale after a sku change
races a fill, so readers check the product they find has that sku (and ask the catalog
when not); the next fill or change overwrites it.
"""

from __future__ import annotations

import logging

import nats.js.errors
from nats.js.kv import KeyValue

from cartwheel import subjects
from cartwheel.contracts.catalog import Product

log = logging.getLogger(__name__)


class ProductCache:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def fill(self, tenant: str, product: Product) -> None:
        try:
            await self.kv.put(subjects.catalog_sku_key(tenant, product.sku), product.id.encode())
            await self.kv.create(subjects.catalog_cache_key(tenant, product.id), product.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # someone cached it first; a change always writes through, so that copy is current
        except Exception as exc:
            log.warning("cache fill for %s failed: %s", product.id, exc)

    async def replace(self, tenant: str, product: Product, previous_sku: str | None = None,
                      attempts: int = 10) -> None:
        """Write ``tenant``'s ``product`` unless the cache holds the same or a newer version; drop the entry if
        that fails.

        ``previous_sku``: the sku before this change (its entry goes, the new one comes first). None (a
        repair from an event, which may be an older version than the cache has): the sku entry is written
        only with the product, so an old event can't bring back the entry of a sku changed since.
        """
        key = subjects.catalog_cache_key(tenant, product.id)
        sku_entry = subjects.catalog_sku_key(tenant, product.sku), product.id.encode()
        try:
            if previous_sku is not None and previous_sku != product.sku:
                await self.kv.delete(subjects.catalog_sku_key(tenant, previous_sku))
                await self.kv.put(*sku_entry)
            if await self._write_newer(key, product, attempts) and previous_sku is None:
                await self.kv.put(*sku_entry)
        except Exception as exc:
            log.error("cache write for %s failed (%s); dropping the entry", product.id, exc)
            try:
                await self.kv.delete(key)
            except Exception:
                log.exception("cache entry %s may be stale until the product event repairs it", key)

    async def _write_newer(self, key: str, product: Product, attempts: int) -> bool:
        """Whether ``product`` was written (False: the cache has the same or a newer version)."""
        value = product.model_dump_json().encode()
        for _ in range(attempts):
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            try:
                if entry is None:
                    await self.kv.create(key, value)
                elif Product.model_validate_json(entry.value or b"{}").version < product.version:
                    await self.kv.update(key, value, last=entry.revision)
                else:
                    return False
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # raced another writer: look again
        raise RuntimeError(f"no stable write after {attempts} attempts")
