"""The catalog's read cache in a NATS KV bucket (the edge design's KV): product JSON by id.

Reads fill it on a miss with ``create`` (never overwriting); every change writes the new
version with compare-and-set, keeping the highest ``version``, so a slow fill can never
put an older product back over a newer one.
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

    async def fill(self, product: Product) -> None:
        try:
            await self.kv.create(subjects.catalog_cache_key(product.id), product.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # someone cached it first; a change always writes through, so that copy is current
        except Exception as exc:
            log.warning("cache fill for %s failed: %s", product.id, exc)

    async def replace(self, product: Product, attempts: int = 10) -> None:
        key = subjects.catalog_cache_key(product.id)
        value = product.model_dump_json().encode()
        try:
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
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # raced another writer: look again
            raise RuntimeError(f"no stable write after {attempts} attempts")
        except Exception as exc:
            log.error("cache write for %s failed (%s); dropping the entry", product.id, exc)
            await self.kv.delete(key)
