"""orders and their transitions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from cartwheel.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("cart_id", sa.String(64), nullable=True),
        sa.Column("idempotency_key", sa.String(400), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.Text(), nullable=False),
        sa.Column("reservation", sa.String(100), nullable=False),
        sa.Column("reserved_until", UTCDateTime(), nullable=True),
        sa.Column("payment_intent_id", sa.String(255), nullable=True),
        sa.Column("client_secret", sa.String(500), nullable=True),
        sa.Column("payment_status", sa.String(40), nullable=True),
        sa.Column("payment_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_orders"),
        sa.UniqueConstraint("id", name="uq_orders_id"),
        sa.UniqueConstraint("idempotency_key", name="uq_orders_idempotency_key"),
    )
    op.create_index("ix_orders_status_updated", "orders", ["status", "updated_at"])
    op.create_index("ix_orders_user_seq", "orders", ["user_id", "seq"])
    op.create_index("ix_orders_payment_intent_id", "orders", ["payment_intent_id"])
    op.create_table(
        "order_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("from_status", sa.String(20), nullable=True),
        sa.Column("to_status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_order_transitions"),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name="fk_order_transitions_order_id_orders", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_order_transitions_order_id", "order_transitions", ["order_id"])


def downgrade() -> None:
    op.drop_index("ix_order_transitions_order_id", table_name="order_transitions")
    op.drop_table("order_transitions")
    op.drop_index("ix_orders_payment_intent_id", table_name="orders")
    op.drop_index("ix_orders_user_seq", table_name="orders")
    op.drop_index("ix_orders_status_updated", table_name="orders")
    op.drop_table("orders")
