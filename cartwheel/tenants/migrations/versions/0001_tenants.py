"""tenants: the registry, their hosts, the journal of migrations across tenants

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from cartwheel.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("admin_token_hash", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    op.create_table(
        "tenant_hosts",
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("tenant", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("host", name="pk_tenant_hosts"),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], name="fk_tenant_hosts_tenant_tenants",
                                ondelete="CASCADE"),
    )
    op.create_index("ix_tenant_hosts_tenant", "tenant_hosts", ["tenant"])
    op.create_table(
        "tenant_migrations",
        sa.Column("tenant", sa.String(40), nullable=False),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "service", name="pk_tenant_migrations"),
    )


def downgrade() -> None:
    op.drop_table("tenant_migrations")
    op.drop_index("ix_tenant_hosts_tenant", table_name="tenant_hosts")
    op.drop_table("tenant_hosts")
    op.drop_table("tenants")
