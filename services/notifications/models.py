"""Notifications tables: every mail sent about an order (its id makes a repeated event send nothing), and the
mails the embedded catcher took in."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cartwheel.db import UTCDateTime, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata()


class MailRow(Base):
    __tablename__ = "mails"
    __table_args__ = (Index("ix_mails_order", "order_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # kind.event id (mails.mail_id)
    kind: Mapped[str] = mapped_column(String(40))
    order_id: Mapped[str] = mapped_column(String(100))
    to: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20))  # sending, sent, failed (refused for good)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    """While one worker sends it: a repeat of its event that comes meanwhile waits (two workers, one mail)."""


class CaughtMailRow(Base):
    __tablename__ = "caught_mails"
    __table_args__ = (Index("ix_caught_mails_tenant", "tenant", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[str] = mapped_column(Text)  # JSON list
    subject: Mapped[str] = mapped_column(String(500))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UnsubscribedRow(Base):
    """An address that wants no more cart reminders (mails about its orders still go)."""

    __tablename__ = "unsubscribed"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
