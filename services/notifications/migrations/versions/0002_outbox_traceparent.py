"""outbox.traceparent: the trace an event continues when it is published

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from cartwheel.migrations import add_outbox_traceparent as upgrade
from cartwheel.migrations import drop_outbox_traceparent as downgrade

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
__all__ = ["downgrade", "upgrade"]
