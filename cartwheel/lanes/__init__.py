"""Lanes: keyed, strictly ordered actors on JetStream partitions (Cartwheel's Durable Objects).

A lane is a stream on ``<lane>.cmd.<key>`` mapped onto N partitions. One replica at a time
applies a partition's commands, in stream order, in batches of one database transaction
each (state, applied command ids, alarms, outbox events and the partition's cursor), then
replies. See README "Lanes" for the guarantees.
"""

from cartwheel.lanes.types import ALARM, Alarm, LaneCommand, LaneSpec, Outcome

__all__ = ["ALARM", "Alarm", "LaneCommand", "LaneSpec", "Outcome", "partition_of"]


def partition_of(key: str, partitions: int) -> int:
    """The partition NATS maps ``key`` to (its ``partition()`` subject transform: FNV-1a 32-bit, mod N)."""
    h = 0x811C9DC5
    for byte in key.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions
