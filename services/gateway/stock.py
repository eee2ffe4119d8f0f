"""How many units of a product can be bought now, for product reads: best effort, never the reason a read fails."""

from __future__ import annotations

import logging

from cartwheel.contracts.inventory import GetStock, GetStocks, StockLevel, StockLevels
from cartwheel.errors import DomainError, ServiceUnavailable
from services.gateway.context import gateway

log = logging.getLogger("cartwheel.gateway.stock")

AVAILABILITY_TIMEOUT = 1.0  # seconds; a product page shouldn't wait the full request timeout for a number


def available(product_id: str) -> int | None:
    """``available`` of one product; None when inventory doesn't answer in time."""
    ctx = gateway()
    try:
        data = ctx.bus.request(GetStock(tenant=ctx.settings.tenant, product_id=product_id), _timeout())
        return StockLevel.model_validate(data).available
    except (ServiceUnavailable, DomainError, ValueError) as error:
        log.info("gateway serves product %s without availability: %s", product_id, error)
        return None


def available_of(product_ids: list[str]) -> dict[str, int]:
    """``available`` of each product, in one request; products missing from the answer are unknown (null)."""
    if not product_ids:
        return {}
    ctx = gateway()
    try:
        data = ctx.bus.request(GetStocks(tenant=ctx.settings.tenant, product_ids=product_ids), _timeout())
        return {level.product_id: level.available for level in StockLevels.model_validate(data).items}
    except (ServiceUnavailable, DomainError, ValueError) as error:
        log.info("gateway serves %d products without availability: %s", len(product_ids), error)
        return {}


def _timeout() -> float:
    return min(AVAILABILITY_TIMEOUT, gateway().settings.request_timeout)
