"""outbox.traceparent: the trace an event continues when it is published

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from cartwheel.migrations import add_outbox_traceparent as upgrade
from cartwheel.migrations import drop_outbox_traceparent as downgrade

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
__all__ = ["downgrade", "upgrade"]
