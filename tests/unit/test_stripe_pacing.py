"""The rate limit kept on our side of Stripe: turns in priority order, Stripe's 429 holding every call back."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.payments.pacing import AGE_S, BACKGROUND, CHECKOUT, INTERACTIVE, Pacer
from services.payments.stripe_api import RATE_LIMITED_WAIT_S, retry_after


def test_waiting_calls_get_their_turns_in_priority_order_then_in_arrival_order() -> None:
    async def main() -> list[str]:
        pacer = Pacer(rate=20, burst=1)
        assert await pacer.turn(BACKGROUND)  # the only token: everyone after waits
        order: list[str] = []

        async def call(name: str, priority: int) -> None:
            await pacer.turn(priority)
            order.append(name)

        calls = [asyncio.create_task(call(name, priority)) for name, priority in
                 [("refund", BACKGROUND), ("create-1", CHECKOUT), ("confirm", INTERACTIVE), ("create-2", CHECKOUT)]]
        await asyncio.sleep(0)
        assert pacer.waiting() == 4 and pacer.waiting(CHECKOUT) == 2
        await asyncio.gather(*calls)
        return order

    assert asyncio.run(main()) == ["confirm", "create-1", "create-2", "refund"]


def test_the_rate_is_kept_over_many_calls() -> None:
    async def main() -> float:
        pacer = Pacer(rate=200, burst=5)
        began = time.monotonic()
        await asyncio.gather(*(pacer.turn(CHECKOUT) for _ in range(105)))
        return time.monotonic() - began

    assert asyncio.run(main()) >= (105 - 5) / 200 * 0.95  # never faster than the rate (slower only on a busy box)


def test_a_call_whose_turn_does_not_come_in_time_gives_up_and_leaves_its_place() -> None:
    async def main() -> tuple[bool, bool, int]:
        pacer = Pacer(rate=5, burst=1)
        assert await pacer.turn(CHECKOUT)
        late = await pacer.turn(CHECKOUT, wait=0.02)  # the next token is 0.2 s away
        waiting = pacer.waiting()
        return late, await pacer.turn(CHECKOUT, wait=1.0), waiting

    late, next_one, waiting = asyncio.run(main())
    assert (late, next_one, waiting) == (False, True, 0)


def test_a_429_holds_every_call_back_for_the_time_stripe_asks() -> None:
    async def main() -> tuple[bool, float]:
        pacer = Pacer(rate=1000, burst=10)
        pacer.hold(0.3)
        refused = await pacer.turn(INTERACTIVE, wait=0.1)
        began = time.monotonic()
        await pacer.turn(INTERACTIVE)
        return refused, time.monotonic() - began

    refused, waited = asyncio.run(main())
    assert not refused and waited >= 0.15


def test_stripes_retry_after_is_taken_else_a_doubling_wait_with_jitter() -> None:
    assert retry_after({"retry-after": "2"}, 0) == 2.0
    assert retry_after({"Retry-After": "0.5"}, 3) == 0.5
    low, high = RATE_LIMITED_WAIT_S
    first, later = retry_after({}, 0), retry_after(None, 10)
    assert low / 2 <= first <= low and high / 2 <= later <= high


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Pacer(rate=0)


def test_a_background_call_is_not_starved_by_a_flood_of_checkout_calls() -> None:
    async def main() -> float:
        pacer = Pacer(rate=50, burst=1)
        stop = asyncio.Event()
        calls: list[asyncio.Task[bool]] = []

        async def flood() -> None:  # more checkout calls than the rate, for as long as the test runs
            while not stop.is_set():
                calls.append(asyncio.create_task(pacer.turn(CHECKOUT, wait=5)))
                await asyncio.sleep(1 / 80)

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.2)
        began = time.monotonic()
        served = await pacer.turn(BACKGROUND, wait=5)  # the strict priority order starved it: never served
        waited = time.monotonic() - began if served else float("inf")
        stop.set()
        await flooding
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        return waited

    assert AGE_S * 0.9 <= asyncio.run(main()) < 5  # served once the oldest kept waiting (strict order: never)


def test_calls_that_gave_up_leave_nothing_behind() -> None:
    async def main() -> int:
        pacer = Pacer(rate=100, burst=1)
        await asyncio.gather(*(pacer.turn(CHECKOUT, wait=0.05) for _ in range(200)))
        await asyncio.sleep(0.02)
        return sum(len(queue) for queue in pacer._waiting)

    assert asyncio.run(main()) == 0


def test_a_slow_rate_still_gives_turns() -> None:
    async def main() -> tuple[bool, bool]:
        pacer = Pacer(rate=0.5)  # a call every two seconds
        return await pacer.turn(CHECKOUT, wait=0.1), await pacer.turn(CHECKOUT, wait=0.1)

    assert asyncio.run(main()) == (True, False)  # a burst below one call made every turn wait for ever
