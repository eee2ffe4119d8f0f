"""Lanes pieces that need no server: partition mapping and reply envelopes."""

from __future__ import annotations

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
