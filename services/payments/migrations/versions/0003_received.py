"""what a succeeded intent took in (amount and currency, as Stripe said)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_intents") as batch:
        batch.add_column(sa.Column("received_cents", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("received_currency", sa.String(3), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_intents") as batch:
        batch.drop_column("received_currency")
        batch.drop_column("received_cents")
