"""Payments tables: each order's PaymentIntent (or Checkout Session), its refund, and every Stripe event seen."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cartwheel.db import UTCDateTime, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata()


class IntentRow(Base):
    """One PaymentIntent per order: the row, not Stripe's Idempotency-Key, makes a retried create safe."""

    __tablename__ = "payment_intents"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(100), unique=True)
    tenant: Mapped[str] = mapped_column(String(64))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32))
    client_secret: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)
    refunded_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    # What a succeeded intent took in, as Stripe said: orders settles an order only when it matches.
    received_cents: Mapped[int | None] = mapped_column(BigInteger, default=None)
    received_currency: Mapped[str | None] = mapped_column(String(3), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RefundRow(Base):
    """The refund of an order (full refunds only: one per order)."""

    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(100), unique=True)
    payment_intent_id: Mapped[str] = mapped_column(String(255), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StripeEventRow(Base):
    """A verified Stripe event, recorded once with whatever it caused: a replay finds it here."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CheckoutSessionRow(Base):
    """An order's Stripe Checkout Session (hosted payment page): one per order; its intent comes when it is paid."""

    __tablename__ = "checkout_sessions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(100), unique=True)
    tenant: Mapped[str] = mapped_column(String(64))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32))
    url: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StripeAccountRow(Base):
    """The tenant's own Stripe account, in the tenant's own database (deleted and exported with it); without a row
    the installation's account serves it. One row (id 1)."""

    __tablename__ = "stripe_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    secret_key: Mapped[str] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
