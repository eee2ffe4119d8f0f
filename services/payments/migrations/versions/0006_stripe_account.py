"""the tenant's own Stripe account (secret key, webhook secret)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from cartwheel.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stripe_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret_key", sa.Text(), nullable=False),
        sa.Column("webhook_secret", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stripe_account"),
    )


def downgrade() -> None:
    op.drop_table("stripe_account")
