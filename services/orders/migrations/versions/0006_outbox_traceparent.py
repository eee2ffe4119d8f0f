"""outbox.traceparent: the trace an event continues when it is published

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from cartwheel.migrations import add_outbox_traceparent as upgrade
from cartwheel.migrations import drop_outbox_traceparent as downgrade

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
__all__ = ["downgrade", "upgrade"]
