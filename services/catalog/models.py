"""Catalog tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cartwheel.db import UTCDateTime, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata()


class ProductRow(Base):
    """A product. Full-text search runs on an index the migrations keep in sync (see search.py)."""

    __tablename__ = "products"

    # Insertion order: the key of cursor pagination, so pages stay stable while products are added.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    price_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    image_etag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    file_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    file_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    file_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    file_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# What migration 0002 makes for full-text search that the models don't describe: SQLite's FTS5
# table (and its shadow tables), PostgreSQL's generated tsvector column and its GIN index.
FULL_TEXT_OBJECTS = frozenset(
    {
        "products_fts",
        "products_fts_config",
        "products_fts_data",
        "products_fts_docsize",
        "products_fts_idx",
        "search_vector",
        "ix_products_search_vector",
    }
)


def described_by_models(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object`` hook: leave the full-text objects out when comparing models and database."""
    return not (reflected and name in FULL_TEXT_OBJECTS)
