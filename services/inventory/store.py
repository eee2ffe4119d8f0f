"""Stock queries: they read the lane's stored state directly, never through the lane."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cartwheel import subjects
from cartwheel.contracts.inventory import StockLevel
from cartwheel.lanes.store import load_states
from services.inventory.state import Counts


def stock_levels(session: Session, product_ids: list[str]) -> list[StockLevel]:
    """Levels in the order asked; a product inventory never heard of reads as zeros (nothing to sell)."""
    states = load_states(session, subjects.INVENTORY_LANE, list(dict.fromkeys(product_ids)))
    return [Counts.model_validate_json(states[p]).level(p) if p in states else Counts().level(p) for p in product_ids]
