"""Each product's stock in a NATS KV bucket, so product reads and carts needn't ask inventory; each key starts
with its tenant's name (one bucket serves every tenant).

Written only forward: an entry carries the stock's ``version`` (one more with every change, set
by the lane), and a write replaces an entry only with compare-and-set and only by a higher
version, so a slow or redelivered write can never put older stock back. Readers parse the
entry as a :class:`~cartwheel.contracts.inventory.StockLevel` (the version is an extra field).
"""

from __future__ import annotations

import logging
import time

import nats.js.errors
from nats.js.kv import KeyValue

from cartwheel import subjects
from cartwheel.contracts.inventory import StockLevel

log = logging.getLogger("cartwheel.inventory.availability")

FILL_EVERY = 1.0  # seconds: a product's entry is checked on a stock query at most this often


class StockEntry(StockLevel):
    version: int

    def level(self) -> StockLevel:
        return StockLevel(product_id=self.product_id, on_hand=self.on_hand, reserved=self.reserved,
                          available=self.available)


class StockBoard:
    """Writes :class:`StockEntry` values into the stock bucket, never moving one backwards."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._known: dict[str, tuple[int, int]] = {}  # key -> (revision, version) this process last saw
        self._filled: dict[str, float] = {}

    def holds(self, tenant: str, product_id: str, version: int) -> bool:
        """True when this process wrote (or saw) the product's entry at ``version`` or newer."""
        known = self._known.get(subjects.inventory_stock_key(tenant, product_id))
        return known is not None and known[1] >= version

    async def write(self, tenant: str, entry: StockEntry, attempts: int = 10) -> bool:
        """Put ``tenant``'s ``entry`` unless the bucket holds the same or a newer version; True if written."""
        key = subjects.inventory_stock_key(tenant, entry.product_id)
        value = entry.model_dump_json().encode()
        known = self._known.get(key)
        if known is not None and known[1] >= entry.version:
            return False
        for _ in range(attempts):
            try:
                if known is None:
                    known = await self._look(key)
                if known is None:
                    revision = await self.kv.create(key, value)
                elif known[1] >= entry.version:
                    return False
                else:
                    revision = await self.kv.update(key, value, last=known[0])
            except nats.js.errors.KeyWrongLastSequenceError:
                known = None  # raced another writer, or the entry is gone: look again
                continue
            self._known[key] = (revision, entry.version)
            return True
        raise RuntimeError(f"no stable write of {key} after {attempts} attempts")

    async def fill(self, tenant: str, entry: StockEntry) -> None:
        """On a stock query: write ``entry`` if the bucket lacks it or holds older (at most once a second)."""
        now = time.monotonic()
        key = subjects.inventory_stock_key(tenant, entry.product_id)
        if self._filled.get(key, 0.0) > now:
            return
        self._filled[key] = now + FILL_EVERY
        self._known.pop(key, None)  # the bucket may have lost it
        try:
            await self.write(tenant, entry)
        except Exception as error:  # best effort: the stock events write it too
            log.info("stock entry of %s not filled: %r", entry.product_id, error)

    async def keys(self) -> set[str]:
        """Every key the bucket holds now."""
        try:
            return set(await self.kv.keys())
        except nats.js.errors.NoKeysError:
            return set()

    async def _look(self, key: str) -> tuple[int, int] | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # never written, deleted or purged
            return None
        try:
            version = StockEntry.model_validate_json(entry.value or b"{}").version
        except ValueError:
            version = -1  # unreadable: any real version replaces it
        return entry.revision or 0, version
