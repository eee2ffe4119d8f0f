"""Merging an anonymous cart into a user's at login, as the two lane commands apply it (no I/O)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cartwheel.errors import DomainError
from cartwheel.lanes.types import LaneCommand
from services.cart.domain import CartState, abandon_alarm, forget_alarm
from tests.unit.test_cart_domain import SPEC, T0, add, product

ANON, USER = "anon-1", "user-1"
_seq = iter(range(1, 10_000))


def run(state: CartState, key: str, kind: str, **body: Any) -> tuple[CartState, Any]:
    n = next(_seq)
    command = LaneCommand(id=f"m{n}", key=key, kind=kind, body={"cart_id": key, **body}, sequence=n, issued_at=T0)
    outcome = SPEC.handle(state, command)
    return outcome.state or state, outcome


def away(anon: CartState, into: str = USER) -> tuple[CartState, list[dict[str, Any]]]:
    state, outcome = run(anon, ANON, "merge_away", into=into)
    return state, outcome.reply["lines"]


def absorb(user: CartState, lines: list[dict[str, Any]], available: dict[str, int] | None = None,
           for_sale: dict[str, bool] | None = None) -> tuple[CartState, Any]:
    pids = [line["product"]["product_id"] for line in lines]
    return run(
        user, USER, "absorb", source_cart_id=ANON, lines=lines, email="shopper@example.test",
        available=available if available is not None else dict.fromkeys(pids, 100),
        for_sale=for_sale if for_sale is not None else dict.fromkeys(pids, True),
    )


def quantities(state: CartState) -> dict[str, int]:
    return {pid: line.quantity for pid, line in state.lines.items()}


def test_overlapping_lines_add_and_the_users_price_wins() -> None:
    anon = add(add(CartState(), quantity=2, pid="p1", price=900), quantity=1, pid="p2", price=500)
    user = add(CartState(), quantity=3, pid="p1", price=1200, email="shopper@example.test")
    anon_after, lines = away(anon)
    assert anon_after.status == "merged" and anon_after.merged_into == USER
    merged, outcome = absorb(user, lines)
    assert quantities(merged) == {"p1": 5, "p2": 1}
    assert merged.lines["p1"].product.unit_price_cents == 1200  # the user's snapshot, not the anonymous one
    assert merged.lines["p2"].product.unit_price_cents == 500
    assert merged.email == "shopper@example.test" and outcome.reply["adjustments"] == []
    assert [e.subject for e in outcome.events] == ["events.cart.updated", "events.cart.merged"]
    assert outcome.events[1].source_cart_id == ANON
    assert outcome.alarms[0].id == abandon_alarm(USER) and forget_alarm(USER) in outcome.cancel_alarms


def test_lines_are_capped_by_stock_but_never_below_what_the_user_had() -> None:
    anon = add(add(CartState(), quantity=4, pid="p1"), quantity=3, pid="p2")
    user = add(CartState(), quantity=2, pid="p2")
    _, lines = away(anon)
    merged, outcome = absorb(user, lines, available={"p1": 3, "p2": 1})
    assert quantities(merged) == {"p1": 3, "p2": 2}
    assert outcome.reply["adjustments"] == [
        {"product_id": "p1", "sku": "SKU-p1", "name": "Product p1", "requested": 4, "quantity": 3,
         "reason": "out_of_stock", "available": 3},
        {"product_id": "p2", "sku": "SKU-p2", "name": "Product p2", "requested": 5, "quantity": 2,
         "reason": "out_of_stock", "available": 1},
    ]


def test_sold_out_inactive_and_other_currency_lines_stay_behind_and_are_reported() -> None:
    anon = add(add(add(CartState(), pid="p1"), pid="p2"), pid="p3")
    usd_anon = add(CartState(), pid="p4", currency="USD")
    user = add(CartState(), pid="p9")
    _, lines = away(anon)
    _, usd_lines = away(usd_anon)
    merged, outcome = absorb(user, lines + usd_lines, available={"p1": 0, "p2": 5, "p3": 5, "p4": 5},
                             for_sale={"p1": True, "p2": False, "p3": True, "p4": True})
    assert quantities(merged) == {"p9": 1, "p3": 1}
    assert [(a["product_id"], a["reason"], a["quantity"]) for a in outcome.reply["adjustments"]] == [
        ("p1", "out_of_stock", 0), ("p2", "not_for_sale", 0), ("p4", "currency_mismatch", 0)]


def test_quantity_and_line_limits_cap_the_merge() -> None:
    anon = add(add(CartState(), quantity=600, available=600, pid="p1"), pid="extra")
    user = CartState()
    for i in range(99):
        user = add(user, pid=f"u{i}")
    user = add(user, quantity=500, available=500, pid="p1")
    _, lines = away(anon)
    merged, outcome = absorb(user, lines, available={"p1": 5000, "extra": 5})
    assert merged.lines["p1"].quantity == 999 and "extra" not in merged.lines and len(merged.lines) == 100
    assert [(a["product_id"], a["reason"]) for a in outcome.reply["adjustments"]] == [
        ("p1", "quantity_limit"), ("extra", "line_limit")]


def test_an_empty_anonymous_cart_or_a_user_without_a_cart() -> None:
    _, lines = away(CartState())
    assert lines == []
    merged, _ = absorb(CartState(), away(add(CartState(), quantity=2))[1])  # the user had no cart yet
    assert quantities(merged) == {"p1": 2} and merged.email == "shopper@example.test"


def test_a_merged_cart_is_closed_but_merging_it_again_into_the_same_cart_moves_nothing() -> None:
    merged, _ = away(add(CartState()))
    with pytest.raises(DomainError) as refused:
        run(merged, ANON, "add", product=product(), quantity=1, available=5)
    assert refused.value.code == "cart_closed"
    assert away(merged) == (merged, [])
    with pytest.raises(DomainError):
        away(merged, into="someone-else")
    checked_out = CartState(status="checked_out")
    with pytest.raises(DomainError):
        absorb(checked_out, [])


def test_a_merged_anonymous_cart_is_forgotten_later_and_its_abandonment_is_cancelled() -> None:
    _, outcome = run(add(CartState()), ANON, "merge_away", into=USER)
    assert abandon_alarm(ANON) in outcome.cancel_alarms
    assert [a.id for a in outcome.alarms] == [forget_alarm(ANON)]
    assert outcome.alarms[0].at == T0 + timedelta(days=30)
