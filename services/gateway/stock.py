"""How many units of a product can be bought now, for product reads: best effort, never the reason a read fails.

Inventory keeps each product's stock in a KV bucket; each gateway worker holds a live copy of it
(see :data:`services.gateway.bridge.MIRRORED`), so a read usually costs no round trip. A product
the bucket lacks is asked of inventory, which then writes it there.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from cartwheel import subjects
from cartwheel.contracts.inventory import GetStock, GetStocks, StockLevel, StockLevels
from cartwheel.errors import DomainError, ServiceUnavailable
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant

log = logging.getLogger("cartwheel.gateway.stock")

AVAILABILITY_TIMEOUT = 1.0  # seconds; a product page shouldn't wait the full request timeout for a number


def available(product_id: str) -> int | None:
    """``available`` of one product; None when inventory doesn't answer in time."""
    known = _from_bucket(product_id)
    if known is not None:
        return known
    ctx = gateway()
    try:
        data = ctx.bus.request(GetStock(tenant=current_tenant(), product_id=product_id), _timeout())
        return StockLevel.model_validate(data).available
    except (ServiceUnavailable, DomainError, ValueError) as error:
        log.info("gateway serves product %s without availability: %s", product_id, error)
        return None


def available_of(product_ids: list[str]) -> dict[str, int]:
    """``available`` of each product; those the bucket lacks in one request; products missing from both are null.

    While this worker's copy of the bucket is not in sync (just started, reconnecting), reading the bucket
    would cost a round trip per product: inventory is asked for the whole page in one request instead.
    """
    found: dict[str, int] = {}
    if gateway().bus.kv_is_local(subjects.INVENTORY_STOCK_BUCKET):
        for product_id in product_ids:
            if (known := _from_bucket(product_id)) is not None:
                found[product_id] = known
    missing = [p for p in product_ids if p not in found]
    if not missing:
        return found
    ctx = gateway()
    try:
        data = ctx.bus.request(GetStocks(tenant=current_tenant(), product_ids=missing), _timeout())
        found.update({level.product_id: level.available for level in StockLevels.model_validate(data).items})
    except (ServiceUnavailable, DomainError, ValueError) as error:
        log.info("gateway serves %d products without availability: %s", len(missing), error)
    return found


def _from_bucket(product_id: str) -> int | None:
    """The product's ``available`` as inventory last wrote it to the stock bucket; None if not there."""
    try:
        key = subjects.inventory_stock_key(current_tenant(), product_id)
        raw = gateway().bus.kv_get(subjects.INVENTORY_STOCK_BUCKET, key)
    except ServiceUnavailable:
        return None
    if raw is None:
        return None
    try:
        return StockLevel.model_validate_json(raw).available
    except ValidationError:
        log.warning("gateway ignores an unreadable stock entry of %s", product_id)
        return None


def _timeout() -> float:
    return min(AVAILABILITY_TIMEOUT, gateway().settings.request_timeout)
