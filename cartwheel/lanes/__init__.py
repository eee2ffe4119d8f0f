"""Lanes: keyed, strictly ordered actors on JetStream partitions (Cartwheel's Durable Objects).

A lane is a stream on ``<lane>.cmd.<key>`` mapped onto N partitions. One replica at a time
applies a partition's commands, in stream order, in batches of one database transaction
each (state, applied command ids, alarms, outbox events and the partition's cursor), then
replies. See README "Lanes" for the guarantees.
"""

from cartwheel.lanes.types import ALARM, Alarm, LaneCommand, LaneSpec, Outcome

__all__ = ["ALARM", "Alarm", "LaneCommand", "LaneSpec", "Outcome"]
