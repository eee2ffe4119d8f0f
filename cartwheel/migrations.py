"""Schema steps shared by every service's Alembic history (each service calls them from its own revision).

Functions here are frozen once released: a later change to the platform tables is a new
function, called from a new revision in every service.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cartwheel.db import UTCDateTime


def create_platform_tables_v1() -> None:
    """The outbox and the processed-event record (see :mod:`cartwheel.outbox`)."""
    op.create_table(
        "outbox",
        sa.Column("position", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("position", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(100), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name="pk_processed_events"),
    )


def drop_platform_tables_v1() -> None:
    op.drop_table("processed_events")
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")


def create_lane_tables_v1() -> None:
    """State, applied command ids, alarms and cursors of the lanes runtime (see :mod:`cartwheel.lanes`)."""
    op.create_table(
        "lane_state",
        sa.Column("lane", sa.String(64), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("lane", "key", name="pk_lane_state"),
    )
    op.create_table(
        "lane_commands",
        sa.Column("lane", sa.String(64), nullable=False),
        sa.Column("command_id", sa.String(100), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("applied_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("lane", "command_id", name="pk_lane_commands"),
    )
    op.create_index("ix_lane_commands_applied_at", "lane_commands", ["applied_at"])
    op.create_table(
        "lane_alarms",
        sa.Column("lane", sa.String(64), nullable=False),
        sa.Column("alarm_id", sa.String(100), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("lane", "alarm_id", name="pk_lane_alarms"),
    )
    op.create_index("ix_lane_alarms_due", "lane_alarms", ["lane", "partition", "due_at"])
    op.create_table(
        "lane_cursors",
        sa.Column("lane", sa.String(64), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lane", "partition", name="pk_lane_cursors"),
    )


def create_lane_dead_letters() -> None:
    op.create_table(
        "lane_dead_letters",
        sa.Column("lane", sa.String(64), nullable=False),
        sa.Column("command_id", sa.String(100), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("lane", "command_id", name="pk_lane_dead_letters"),
    )


def drop_lane_dead_letters() -> None:
    op.drop_table("lane_dead_letters")


def drop_lane_tables_v1() -> None:
    op.drop_table("lane_cursors")
    op.drop_index("ix_lane_alarms_due", table_name="lane_alarms")
    op.drop_table("lane_alarms")
    op.drop_index("ix_lane_commands_applied_at", table_name="lane_commands")
    op.drop_table("lane_commands")
    op.drop_table("lane_state")


def add_outbox_traceparent() -> None:
    """The trace of the change that recorded an event, sent with it (see :mod:`cartwheel.tracing`)."""
    with op.batch_alter_table("outbox") as table:
        table.add_column(sa.Column("traceparent", sa.String(64), nullable=True))


def drop_outbox_traceparent() -> None:
    with op.batch_alter_table("outbox") as table:
        table.drop_column("traceparent")


def create_lane_tenant_alarms() -> None:
    """Which other tenants have lane alarms in a partition (see :class:`cartwheel.lanes.models.LaneTenantAlarm`)."""
    op.create_table(
        "lane_tenant_alarms",
        sa.Column("lane", sa.String(64), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(40), nullable=False),
        sa.Column("next_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("lane", "partition", "tenant", name="pk_lane_tenant_alarms"),
    )


def drop_lane_tenant_alarms() -> None:
    op.drop_table("lane_tenant_alarms")
