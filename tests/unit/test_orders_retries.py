"""A failing sweep step backs off, doubling to a cap; one failing for good is put aside; a success forgets; an order
busy with another step keeps its count."""

from __future__ import annotations

import asyncio

import pytest

from cartwheel.errors import DomainError, ServiceUnavailable
from services.orders import retries
from services.orders.claims import OrderBusy
from services.orders.retries import Retries

UNREACHABLE = ServiceUnavailable("payments", "down")
NOT_FOUND = DomainError("Stripe has no such object", code="not_found")


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


class Sweeps:
    """Retries as the sweeper makes them, on a clock of its own; ``given_up``: the orders put aside, and why."""

    def __init__(self) -> None:
        self.clock, self.given_up = Clock(), []
        self.retries = Retries(self._give_up, not_tried=(OrderBusy,), clock=self.clock)

    async def _give_up(self, order_id: str, reason: str) -> None:
        self.given_up.append((order_id, reason))

    def sweep(self, step: Step, order_id: str = "o1") -> bool:
        """One sweep's try of the step; whether it was taken."""
        tried = step.tries
        asyncio.run(self.retries.attempt(order_id, step))
        return step.tries > tried

    def next_try(self, step: Step, order_id: str = "o1") -> float:
        """Sweep every 0.5 s (a sum a float keeps exactly) until the step is tried again; the seconds that took."""
        started = self.clock.now
        while not self.sweep(step, order_id):
            self.clock.now += 0.5
        return self.clock.now - started


def test_a_failing_step_waits_twice_as_long_after_each_failure_up_to_the_cap() -> None:
    sweeps, step = Sweeps(), Step(UNREACHABLE)
    assert sweeps.sweep(step)
    waits = [sweeps.next_try(step) for _ in range(9)]
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0]
    assert waits[-1] == max(waits) == retries.BACKOFF_MAX
    assert sweeps.retries.failures("o1") == 10 and sweeps.given_up == []  # unreachable: tried as long as it takes


def test_a_step_refused_as_not_found_is_put_aside_after_the_last_try() -> None:
    sweeps, step = Sweeps(), Step(NOT_FOUND)
    assert sweeps.sweep(step)
    while not sweeps.given_up:
        sweeps.next_try(step)
    assert step.tries == retries.GIVE_UP
    assert sweeps.given_up == [("o1", f"the sweeper gave up after {retries.GIVE_UP} tries: Stripe has no such object")]


def test_another_refusal_backs_off_but_is_never_given_up() -> None:
    sweeps, step = Sweeps(), Step(DomainError("not now"))
    assert sweeps.sweep(step)
    for _ in range(retries.GIVE_UP * 2):
        sweeps.next_try(step)
    assert step.tries == 1 + retries.GIVE_UP * 2 and sweeps.given_up == []


def test_an_order_busy_with_another_step_keeps_its_count_and_its_wait() -> None:
    """Review: the busy order's try counted as a success, and the count of tries before giving up began again."""
    sweeps, refused = Sweeps(), Step(NOT_FOUND)
    for _ in range(retries.GIVE_UP - 1):
        sweeps.clock.now += retries.BACKOFF_MAX
        assert sweeps.sweep(refused)
    sweeps.clock.now += retries.BACKOFF_MAX
    assert sweeps.sweep(Step(OrderBusy("o1")))  # another step holds it: not taken
    assert sweeps.retries.failures("o1") == retries.GIVE_UP - 1 and sweeps.given_up == []
    assert sweeps.sweep(refused) and len(sweeps.given_up) == 1  # the last try, as if the busy sweep had not been


def test_a_success_forgets_the_failures() -> None:
    sweeps, failing = Sweeps(), Step(UNREACHABLE)
    assert sweeps.sweep(failing) and not sweeps.sweep(failing)  # within its back-off: not tried
    sweeps.clock.now += 2.0
    assert sweeps.sweep(Step(None)) and sweeps.retries.failures("o1") == 0
    assert sweeps.sweep(failing)  # forgotten: tried at once, its wait starting again from the first
    assert sweeps.next_try(failing) == 2.0


def test_orders_no_longer_listed_are_forgotten_once_their_back_off_ran_out() -> None:
    sweeps, step = Sweeps(), Step(UNREACHABLE)
    sweeps.sweep(step, "gone")
    sweeps.sweep(step, "kept")
    sweeps.retries.keep_only(["kept"])  # within the back-off: both kept (a sweep may miss an order for a moment)
    assert sweeps.retries.failures("gone") == sweeps.retries.failures("kept") == 1
    sweeps.clock.now += 2.0 + retries.BACKOFF_MAX  # past its next try by the longest back-off
    sweeps.retries.keep_only(["kept"])
    assert (sweeps.retries.failures("gone"), sweeps.retries.failures("kept")) == (0, 1)


def test_an_error_that_is_not_a_steps_failure_is_the_callers() -> None:
    sweeps = Sweeps()
    with pytest.raises(KeyError):
        sweeps.sweep(Step(KeyError("bug")))
    assert sweeps.retries.failures("o1") == 0 and sweeps.given_up == []
