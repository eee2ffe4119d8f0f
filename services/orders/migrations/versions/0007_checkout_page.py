"""an order paid on Stripe's hosted checkout page: its Checkout Session and the page's address

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("checkout_session_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("checkout_url", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("checkout_url")
        batch.drop_column("checkout_session_id")
