"""lane tables: each cart lives in the cart lane's state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from cartwheel.migrations import create_lane_tables_v1 as upgrade
from cartwheel.migrations import drop_lane_tables_v1 as downgrade

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
__all__ = ["downgrade", "upgrade"]
