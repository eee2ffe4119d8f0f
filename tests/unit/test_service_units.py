"""The service runtime's pure parts."""

from __future__ import annotations

from cartwheel.service import REDELIVER_MAX_S, REDELIVER_S, redelivery_delay


def test_a_failed_event_comes_back_sooner_at_first_and_never_later_than_the_cap() -> None:
    waits = [redelivery_delay(n) for n in (0, 1, 2, 3, 4)]
    assert waits == [REDELIVER_S, REDELIVER_S, 2 * REDELIVER_S, 4 * REDELIVER_S, 8 * REDELIVER_S]
    assert redelivery_delay(9) == REDELIVER_MAX_S
    assert redelivery_delay(10_000) == REDELIVER_MAX_S  # no overflow after days of failures
