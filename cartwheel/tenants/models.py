"""The control database's tables: tenants, their hosts, and the journal of migrations across tenants."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cartwheel.db import UTCDateTime, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata()


class TenantRow(Base):
    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # active | disabled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settings: Mapped[str] = mapped_column(Text, default="{}")  # JSON: currency, Stripe keys (see TenantSettings)
    admin_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class HostRow(Base):
    __tablename__ = "tenant_hosts"

    host: Mapped[str] = mapped_column(String(253), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"), index=True)


class MigrationRow(Base):
    """One tenant's one database, as ``cartwheel migrate --all-tenants`` last left it."""

    __tablename__ = "tenant_migrations"

    tenant: Mapped[str] = mapped_column(String(40), primary_key=True)
    service: Mapped[str] = mapped_column(String(32), primary_key=True)
    revision: Mapped[str] = mapped_column(String(64))  # the head it was brought to (or tried)
    status: Mapped[str] = mapped_column(String(16))  # done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
