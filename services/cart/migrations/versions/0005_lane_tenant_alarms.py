"""lane_tenant_alarms: which other tenants have lane alarms in a partition (lanes with a database per tenant)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from cartwheel.migrations import create_lane_tenant_alarms as upgrade
from cartwheel.migrations import drop_lane_tenant_alarms as downgrade

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
__all__ = ["downgrade", "upgrade"]
