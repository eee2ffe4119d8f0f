"""products.file_*: a digital product's file (name, size, sha256, type)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.add_column(sa.Column("file_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("file_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("file_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("file_type", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("products") as batch:
        for column in ("file_type", "file_sha256", "file_size", "file_name"):
            batch.drop_column(column)
