"""Lanes pieces that need no server: partition mapping and reply envelopes."""

from __future__ import annotations

import asyncio

import pytest

from cartwheel.bus import unwrap
from cartwheel.errors import DomainError
from cartwheel.lanes import partition_of
from cartwheel.lanes.store import _failure, _success


def test_lane_reply_envelopes_read_as_replies() -> None:
    assert unwrap(_success({"left": 3}).encode(), "s") == {"left": 3}
    with pytest.raises(DomainError) as caught:
        unwrap(_failure(DomainError("gone", code="out_of_stock", available=0).to_dict()).encode(), "s")
    assert (caught.value.code, caught.value.details) == ("out_of_stock", {"available": 0})


def test_partition_of_is_stable_and_in_range() -> None:
    keys = [f"product-{i}" for i in range(1000)]
    parts = [partition_of(k, 16) for k in keys]
    assert all(0 <= p < 16 for p in parts) and len(set(parts)) == 16
    assert parts == [partition_of(k, 16) for k in keys]


def test_a_failed_group_falls_back_to_one_transaction_per_partition() -> None:
    """One partition's batch the database refuses must not stall the partitions grouped with it."""
    from types import SimpleNamespace
    from typing import Any

    from cartwheel.lanes.runtime import GroupApplier
    from cartwheel.lanes.store import BatchResult, PartitionBatch

    rounds: list[list[int]] = []

    async def transaction(batches: list[PartitionBatch]) -> list[BatchResult]:
        rounds.append([b.partition for b in batches])
        if any(b.partition == 3 for b in batches):
            raise RuntimeError("refused")
        return [BatchResult(applied=True, last_sequence=b.expected + 1) for b in batches]

    async def scenario() -> list[Any]:
        runtime: Any = SimpleNamespace(spec=SimpleNamespace(name="t"),
                                       metrics=SimpleNamespace(group=SimpleNamespace(observe=lambda n: None)))
        applier = GroupApplier(runtime, grouped=True)
        applier._transaction = transaction  # type: ignore[method-assign]
        applier.start()
        try:
            return await asyncio.gather(*(applier.apply(PartitionBatch(p, 10 * p, [])) for p in range(5)),
                                        return_exceptions=True)
        finally:
            await applier.stop()

    outcomes = asyncio.run(scenario())
    assert rounds[0] == [0, 1, 2, 3, 4]  # handed over together: one round
    assert sorted(rounds[1:]) == [[0], [1], [2], [3], [4]]  # then each on its own
    assert isinstance(outcomes[3], RuntimeError)
    assert [o.last_sequence for i, o in enumerate(outcomes) if i != 3] == [1, 11, 21, 41]
