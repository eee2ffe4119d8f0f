"""Orders tables: the order (with its lines and payment as last heard) and every transition it made."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cartwheel.db import UTCDateTime, service_metadata
from services.orders.domain import HOLDS_STOCK


class Base(DeclarativeBase):
    metadata = service_metadata()


OPEN = text("status IN (" + ", ".join(f"'{status}'" for status in sorted(HOLDS_STOCK)) + ")")
"""An order still open for payment, holding its stock."""


class OrderRow(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_status_updated", "status", "updated_at"),
        Index("ix_orders_user_seq", "user_id", "seq"),
        # One cart, at most one open order, whichever replica takes its checkouts: a double click never
        # makes two orders that could both be paid.
        Index("ux_orders_open_cart", "cart_id", unique=True, sqlite_where=OPEN, postgresql_where=OPEN),
    )

    # Insertion order: the key of cursor pagination (newest first), stable while orders are added.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    status: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer, default=1)
    """Raised by every change; a change names the version it read (optimistic locking)."""
    user_id: Mapped[str | None] = mapped_column(String(64), default=None)
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    cart_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # "<scope>:<Idempotency-Key>": a retried checkout of the same buyer finds its order.
    idempotency_key: Mapped[str | None] = mapped_column(String(400), unique=True, default=None)
    currency: Mapped[str] = mapped_column(String(3))
    total_cents: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[str] = mapped_column(Text)  # JSON list of OrderLine
    reservation: Mapped[str] = mapped_column(String(100))  # the inventory reservation id holding the lines
    reserved_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    client_secret: Mapped[str | None] = mapped_column(String(500), default=None)
    payment_status: Mapped[str | None] = mapped_column(String(40), default=None)
    payment_error: Mapped[str | None] = mapped_column(Text, default=None)
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), default=None)  # hosted: Stripe's page
    checkout_url: Mapped[str | None] = mapped_column(Text, default=None)
    refunded_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Refunded so far, as the payment provider reported it: a partial refund leaves the status alone."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A refund under way: why, and the products whose committed units go back on hand (JSON list).
    refund_reason: Mapped[str | None] = mapped_column(Text, default=None)
    give_back: Mapped[str | None] = mapped_column(Text, default=None)
    # One saga step at a time per order, across replicas: who works on it, and until when at most.
    claimed_by: Mapped[str | None] = mapped_column(String(100), default=None)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class OrderTransitionRow(Base):
    __tablename__ = "order_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(64), ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
