"""Stock queries: they read the lane's stored state directly, never through the lane."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cartwheel import subjects
from cartwheel.contracts.inventory import StockLevel
from cartwheel.lanes.store import load_all_states, load_states
from services.inventory.availability import StockEntry
from services.inventory.state import Counts


def stock_levels(session: Session, product_ids: list[str]) -> list[StockLevel]:
    """Levels in the order asked; a product inventory never heard of reads as zeros (nothing to sell)."""
    states = load_states(session, subjects.INVENTORY_LANE, list(dict.fromkeys(product_ids)))
    return [Counts.model_validate_json(states[p]).level(p) if p in states else Counts().level(p) for p in product_ids]


def stock_entries(session: Session, product_ids: list[str]) -> dict[str, StockEntry]:
    """Levels with their version, of those products that have a stock (none for a product never heard of)."""
    states = load_states(session, subjects.INVENTORY_LANE, list(dict.fromkeys(product_ids)))
    return {p: _entry(p, raw) for p, raw in states.items()}


def stock_entries_after(session: Session, after: str | None, limit: int) -> list[StockEntry]:
    """A page of every product's stock in product id order, after ``after``."""
    return [_entry(p, raw) for p, raw in load_all_states(session, subjects.INVENTORY_LANE, after, limit)]


def _entry(product_id: str, raw: str) -> StockEntry:
    counts = Counts.model_validate_json(raw)
    return StockEntry(**counts.level(product_id).model_dump(), version=counts.version)
