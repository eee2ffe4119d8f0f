"""Upkeep for every tenant (the orders sweeper): each tenant in its own context, on a schedule of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from cartwheel.tenants import context, rounds
from cartwheel.tenants.databases import UnknownTenant
from cartwheel.tenants.rounds import TenantRounds


class FakeDatabases:
    own_name = "default"

    def __init__(self, open_ones: list[str]) -> None:
        self.open_ones = open_ones

    def busy(self, tenant: str) -> bool:
        return tenant == self.own_name or tenant in self.open_ones


def run_for(seconds: float, tenants: list[str], work: Callable[[], Awaitable[float]]) -> None:
    """Rounds of ``work`` for ``tenants`` (``busy`` among them open here) for ``seconds``."""
    async def scenario() -> None:
        swept = TenantRounds("test sweep", FakeDatabases(["busy"]), lambda: tenants, work)  # type: ignore[arg-type]
        task = asyncio.create_task(swept.run_forever())
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_each_tenant_gets_rounds_in_its_own_context_busy_ones_at_their_pace_quiet_ones_seldom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rounds, "LOOK_EVERY_S", 0.01)
    monkeypatch.setattr(rounds, "IDLE_EVERY_S", 60.0)
    seen: list[tuple[str, bool]] = []

    async def work() -> float:
        tenant = context.current("?")
        seen.append((tenant, context.in_background()))
        if tenant == "broken":
            raise UnknownTenant("no databases yet")
        return 0.05

    run_for(0.5, ["busy", "quiet", "broken"], work)
    count = {name: sum(1 for tenant, _ in seen if tenant == name) for name in ("default", "busy", "quiet", "broken")}
    assert count["default"] >= 5 and count["busy"] >= 5, count  # every 0.05 s, as the work asked
    assert count["quiet"] == 1 and count["broken"] == 1, count  # once, then not for a minute
    assert ("quiet", True) in seen and ("busy", False) in seen  # a quiet tenant's round is upkeep: opened cold
    assert context.current("outside") == "outside"


def test_quiet_tenants_rounds_keep_to_their_pace_after_a_start_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen: after a start every tenant's first round was due at once, and a shop with 1,000 tenants registered
    spent every core of the machine on its services' upkeep (a database opened, looked at and closed per round);
    quiet tenants' rounds together keep to IDLE_ROUNDS_PER_S, the first ones too. Busy ones keep their own pace."""
    monkeypatch.setattr(rounds, "LOOK_EVERY_S", 0.01)
    monkeypatch.setattr(rounds, "IDLE_ROUNDS_PER_S", 20.0)
    seen: list[str] = []

    async def work() -> float:
        seen.append(context.current("?"))
        return 0.05

    run_for(0.5, ["busy", *[f"quiet-{i}" for i in range(50)]], work)
    quiet_rounds = sum(1 for tenant in seen if tenant.startswith("quiet-"))
    # 20 a second over 0.5 s: about 10 (all 50 at once before); loose bounds for a loaded machine
    assert 2 <= quiet_rounds <= 15, quiet_rounds
    assert seen.count("busy") >= 5 and seen.count("default") >= 5, seen  # every 0.05 s, as the work asked


def test_busy_tenants_rounds_never_starve_quiet_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: with busy tenants' rounds always due (a sweeper with work in hand asks again at once), quiet
    tenants waited behind them for ever, their overdue orders never expiring. Quiet ones keep their pace."""
    monkeypatch.setattr(rounds, "LOOK_EVERY_S", 0.01)
    monkeypatch.setattr(rounds, "IDLE_ROUNDS_PER_S", 20.0)
    seen: list[str] = []

    async def work() -> float:
        seen.append(context.current("?"))
        await asyncio.sleep(0.005)
        return 0.0  # due again at once

    run_for(0.5, ["busy", *[f"quiet-{i}" for i in range(50)]], work)
    assert sum(1 for tenant in seen if tenant.startswith("quiet-")) >= 2, seen.count("busy")  # about 10; 0 before


def test_a_round_that_fails_is_logged_and_comes_again(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def work() -> float:
        nonlocal calls
        calls += 1
        raise RuntimeError("database went away")

    async def one() -> float:
        swept = TenantRounds("test sweep", FakeDatabases([]), list, work)  # type: ignore[arg-type]
        return await swept._round("default")

    assert asyncio.run(one()) == 5.0
    assert calls == 1 and "test sweep failed for tenant default" in caplog.text
