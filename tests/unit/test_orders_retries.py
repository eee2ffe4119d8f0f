"""A failing sweep step backs off, doubling to a cap; one failing for good is put aside; a success forgets."""

from __future__ import annotations

import asyncio

import pytest

from cartwheel.errors import DomainError, ServiceUnavailable
from services.orders import retries
from services.orders.retries import Retries


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Step:
    """A step that fails with ``error`` (None: succeeds), counting its tries."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.tries = 0

    async def __call__(self, order_id: str) -> None:
        self.tries += 1
        if self.error is not None:
            raise self.error


def make() -> tuple[Retries, Clock, list[tuple[str, str]]]:
    clock, given_up = Clock(), []

    async def give_up(order_id: str, reason: str) -> None:
        given_up.append((order_id, reason))

    return Retries(give_up, clock), clock, given_up


def attempt(r: Retries, step: Step, order_id: str = "o1") -> None:
    asyncio.run(r.attempt(order_id, step))


def test_a_failing_step_waits_twice_as_long_after_each_failure_up_to_the_cap() -> None:
    r, clock, given_up = make()
    step = Step(ServiceUnavailable("payments", "down"))
    waits = []
    for _ in range(10):
        attempt(r, step)
        tried, started = step.tries, clock.now
        while step.tries == tried:  # the next sweep that tries it again
            clock.now += 0.5
            attempt(r, step)
        waits.append(clock.now - started)
        step.tries -= 1  # count the waits, not this probe's try
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(waits) == retries.BACKOFF_MAX and waits[-1] == retries.BACKOFF_MAX
    assert given_up == []  # unreachable is not "failed for good": tried for as long as it takes


def test_a_step_refused_as_not_found_is_put_aside_after_the_last_try_and_not_tried_again() -> None:
    r, clock, given_up = make()
    step = Step(DomainError("Stripe has no such object", code="not_found"))
    while not given_up:
        attempt(r, step)
        clock.now += retries.BACKOFF_MAX
    assert step.tries == retries.GIVE_UP
    assert given_up == [("o1", f"the sweeper gave up after {retries.GIVE_UP} tries: Stripe has no such object")]


def test_another_refusal_backs_off_but_is_never_given_up() -> None:
    r, clock, given_up = make()
    step = Step(DomainError("not now"))
    for _ in range(retries.GIVE_UP * 2):
        attempt(r, step)
        clock.now += retries.BACKOFF_MAX
    assert step.tries == retries.GIVE_UP * 2 and given_up == []


def test_a_success_forgets_the_failures() -> None:
    r, clock, _ = make()
    failing = Step(ServiceUnavailable("payments", "down"))
    attempt(r, failing)
    attempt(r, failing)  # within its back-off: not tried
    assert failing.tries == 1
    clock.now += 2.0
    ok = Step(None)
    attempt(r, ok)
    attempt(r, failing)  # forgotten: tried at once, its wait starting again from the first
    assert (ok.tries, failing.tries) == (1, 2)
    clock.now += 1.9
    attempt(r, failing)
    assert failing.tries == 2


def test_orders_no_longer_listed_are_forgotten_once_their_back_off_ran_out() -> None:
    r, clock, _ = make()
    step = Step(ServiceUnavailable("payments", "down"))
    attempt(r, step, "gone")
    attempt(r, step, "kept")
    r.keep_only(["kept"])  # within the back-off: both kept (a sweep may miss an order for a moment)
    assert len(r._failures) == 2
    clock.now += 2.0 + retries.BACKOFF_MAX  # past its next try by the longest back-off
    r.keep_only(["kept"])
    assert set(r._failures) == {"kept"}


def test_an_error_that_is_not_a_steps_failure_is_the_callers() -> None:
    r, _, given_up = make()
    with pytest.raises(KeyError):
        attempt(r, Step(KeyError("bug")))
    assert r._failures == {} and given_up == []
