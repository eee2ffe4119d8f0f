"""lane_dead_letters: commands the database would not take, set aside instead of stopping their partition

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from cartwheel.migrations import create_lane_dead_letters as upgrade
from cartwheel.migrations import drop_lane_dead_letters as downgrade

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
__all__ = ["downgrade", "upgrade"]
