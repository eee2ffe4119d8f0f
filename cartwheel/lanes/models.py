"""Tables of the lanes runtime, in the database of each service that runs lanes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cartwheel.db import NAMING, UTCDateTime


class LanesBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class LaneState(LanesBase):
    __tablename__ = "lane_state"

    lane: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LaneCommandRecord(LanesBase):
    """Every applied command id and its reply: a retry gets the same answer, never a second effect."""

    __tablename__ = "lane_commands"

    lane: Mapped[str] = mapped_column(String(64), primary_key=True)
    command_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    reply: Mapped[str] = mapped_column(Text)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class LaneAlarm(LanesBase):
    __tablename__ = "lane_alarms"
    __table_args__ = (Index("ix_lane_alarms_due", "lane", "partition", "due_at"),)

    lane: Mapped[str] = mapped_column(String(64), primary_key=True)
    alarm_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(200))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    body: Mapped[str] = mapped_column(Text)


class LaneDeadLetter(LanesBase):
    """A command the database would not take (a constraint, a value it can't store): set aside with the error,
    answered as failed, the partition's cursor moved past it so the keys behind it go on. An operator lists
    them (``cartwheel lanes dead-letters``) and, the cause fixed, sends one again under a new id."""

    __tablename__ = "lane_dead_letters"

    lane: Mapped[str] = mapped_column(String(64), primary_key=True)
    command_id: Mapped[str] = mapped_column(String(100), primary_key=True)  # recorded once: one dead letter
    sequence: Mapped[int] = mapped_column(BigInteger)  # in the stream of its day (a lost stream numbers again)
    partition: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LaneCursor(LanesBase):
    """The last stream sequence applied per partition: moved with compare-and-set in each batch's
    transaction, so two replicas that both think they own a partition can't both apply."""

    __tablename__ = "lane_cursors"

    lane: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)


class LaneTenantAlarm(LanesBase):
    """In the installation's own database: another tenant that may have alarms in a partition, due from
    ``next_at`` on (no row: it has none there). Written with the low-water mark, so the partition's owner looks in
    the few tenants' databases that have alarms, not in 1,000 (README, "Lanes with a database per tenant")."""

    __tablename__ = "lane_tenant_alarms"

    lane: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(40), primary_key=True)
    next_at: Mapped[datetime] = mapped_column(UTCDateTime)
