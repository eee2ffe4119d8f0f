"""The service runtime's pure parts."""

from __future__ import annotations

from cartwheel.service import REDELIVER_MAX_S, REDELIVER_S, redelivery_delay


def test_a_failed_event_comes_back_sooner_at_first_and_never_later_than_the_cap() -> None:
    waits = [redelivery_delay(n) for n in (0, 1, 2, 3, 4)]
    assert waits == [REDELIVER_S, REDELIVER_S, 2 * REDELIVER_S, 4 * REDELIVER_S, 8 * REDELIVER_S]
    assert redelivery_delay(9) == REDELIVER_MAX_S
    assert redelivery_delay(10_000) == REDELIVER_MAX_S  # no overflow after days of failures


def test_health_says_why_a_service_is_not_healthy() -> None:
    from cartwheel.health import _why

    assert _why([{"status": "ok", "database": True}]) == ""
    assert _why([]) == "no replica answered over NATS within 2 s"
    assert _why([{"status": "degraded", "database": False, "instance": "a"}]) == "a: its database does not answer"
    stopped = "lane inventory partition 3: its stream ends at sequence 0, before the cursor 12"
    assert _why([{"status": "degraded", "database": True, "problems": [stopped], "instance": "b"}]) == f"b: {stopped}"


def test_health_names_the_sick_replica_and_counts_the_missing_ones() -> None:
    from cartwheel.health import _why

    ok, sick = {"status": "ok", "instance": "a"}, {"status": "degraded", "instance": "b", "problems": ["x"]}
    assert _why([ok, sick]) == "b: x"  # one sick replica of two makes the service unhealthy
    assert _why([ok], expect=2) == "1 of 2 replicas answered"
    assert _why([ok, {**ok, "instance": "c"}], expect=2) == ""
