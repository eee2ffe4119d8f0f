"""platform tables (outbox, processed events)

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from cartwheel.migrations import create_platform_tables_v1 as upgrade
from cartwheel.migrations import drop_platform_tables_v1 as downgrade

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
__all__ = ["downgrade", "upgrade"]
