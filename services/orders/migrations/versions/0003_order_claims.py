"""order claims (one saga step at a time per order, across replicas) and refunds under way

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from cartwheel.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(100), nullable=True))
        batch.add_column(sa.Column("claimed_until", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("refund_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("give_back", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("give_back")
        batch.drop_column("refund_reason")
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
