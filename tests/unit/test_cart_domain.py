"""Cart rules without I/O: snapshots, limits, stock checks, abandonment and expiry through alarms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cartwheel.errors import DomainError
from cartwheel.lanes.types import ALARM, LaneCommand
from services.cart.domain import CartState, CartTimers, abandon_alarm, forget_alarm, make_spec

CART = "cart-1"
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SPEC = make_spec(CartTimers(abandon_after=timedelta(minutes=30), forget_anonymous_after=timedelta(days=30)))
_seq = iter(range(1, 10_000))


def product(pid: str = "p1", price: int = 1200, currency: str = "EUR", active: bool = True) -> dict[str, Any]:
    return {
        "product_id": pid,
        "sku": f"SKU-{pid}",
        "name": f"Product {pid}",
        "unit_price_cents": price,
        "currency": currency,
        "active": active,
    }


def command(kind: str, at: datetime = T0, **body: Any) -> LaneCommand:
    n = next(_seq)
    return LaneCommand(id=f"c{n}", key=CART, kind=kind, body={"cart_id": CART, **body}, sequence=n, issued_at=at)


def apply(state: CartState, kind: str, at: datetime = T0, **body: Any) -> tuple[CartState, Any]:
    outcome = SPEC.handle(state, command(kind, at, **body))
    return outcome.state or state, outcome


def add(state: CartState, quantity: int = 1, available: int = 100, email: str | None = None, **kw: Any) -> CartState:
    return apply(state, "add", product=product(**kw), quantity=quantity, available=available, email=email)[0]


def test_add_snapshots_the_product_and_totals() -> None:
    _, outcome = apply(CartState(), "add", product=product(price=1250), quantity=2, available=5)
    assert outcome.reply["items"] == [
        {
            "product_id": "p1",
            "sku": "SKU-p1",
            "name": "Product p1",
            "quantity": 2,
            "unit_price_cents": 1250,
            "line_total_cents": 2500,
        }
    ]
    assert (outcome.reply["total_cents"], outcome.reply["item_count"], outcome.reply["currency"]) == (2500, 2, "EUR")
    assert [e.subject for e in outcome.events] == ["events.cart.updated"]
    assert outcome.alarms[0].id == abandon_alarm(CART) and outcome.alarms[0].at == T0 + timedelta(minutes=30)


def test_adding_again_adds_up_and_keeps_the_first_price() -> None:
    state = add(add(CartState(), quantity=2, price=1000), quantity=3, price=999)
    line = state.lines["p1"]
    assert (line.quantity, line.product.unit_price_cents) == (5, 1000)


def test_stock_limits_and_currency() -> None:
    with pytest.raises(DomainError) as caught:
        add(CartState(), quantity=3, available=2)
    assert (caught.value.code, caught.value.details["available"]) == ("out_of_stock", 2)
    state = add(CartState(), quantity=2, available=3)
    with pytest.raises(DomainError) as caught:  # the total asked for counts, not the increment
        add(state, quantity=2, available=3)
    assert caught.value.code == "out_of_stock"
    with pytest.raises(DomainError) as caught:
        add(state, pid="p2", currency="USD")
    assert caught.value.code == "currency_mismatch"
    with pytest.raises(DomainError) as caught:
        add(state, pid="p3", active=False)
    assert caught.value.code == "not_found"


def test_line_and_quantity_limits() -> None:
    state = CartState()
    for i in range(100):
        state = add(state, pid=f"p{i}")
    with pytest.raises(DomainError) as caught:
        add(state, pid="p100")
    assert caught.value.code == "validation_failed"
    with pytest.raises(DomainError):
        add(add(CartState(), quantity=999, available=10_000), quantity=1, available=10_000)


@pytest.mark.parametrize("quantity", [0, -1, 1000, "3", 3.5, None])
def test_invalid_quantities_are_refused(quantity: Any) -> None:
    with pytest.raises(DomainError) as caught:
        apply(CartState(), "add", product=product(), quantity=quantity, available=10)
    assert caught.value.code == "validation_failed"


def test_set_quantity_remove_and_clear() -> None:
    state = add(add(CartState(), quantity=2), pid="p2")
    state, _ = apply(state, "set_quantity", product_id="p1", quantity=5, available=10)
    assert state.lines["p1"].quantity == 5
    with pytest.raises(DomainError):
        apply(state, "set_quantity", product_id="p1", quantity=11, available=10)
    state, _ = apply(state, "set_quantity", product_id="p1", quantity=1, available=0)  # shrinking needs no stock
    state, _ = apply(state, "set_quantity", product_id="p1", quantity=0)
    assert list(state.lines) == ["p2"]
    state, _ = apply(state, "remove", product_id="p2")
    assert state.lines == {}
    with pytest.raises(DomainError) as caught:
        apply(state, "remove", product_id="p2")
    assert caught.value.code == "not_found"
    state, outcome = apply(add(state), "clear")
    assert state.lines == {} and outcome.reply["total_cents"] == 0


def alarm(state: CartState, alarm_id: str, at: datetime) -> tuple[CartState, Any]:
    outcome = SPEC.handle(
        state,
        LaneCommand(
            id=f"alarm:{alarm_id}:1",
            key=CART,
            kind=ALARM,
            body={"alarm_id": alarm_id, "due_at": at.isoformat(), "body": {}},
            sequence=next(_seq),
            issued_at=at,
        ),
    )
    return outcome.state or state, outcome


def test_abandonment_then_a_change_reactivates_and_anonymous_carts_expire() -> None:
    state = add(CartState())
    later = T0 + timedelta(minutes=30)
    state, outcome = alarm(state, abandon_alarm(CART), later)
    assert state.status == "abandoned"
    assert [e.subject for e in outcome.events] == ["events.cart.abandoned"]
    assert [a.id for a in outcome.alarms] == [forget_alarm(CART)]
    revived, outcome = apply(
        state, "add", at=later + timedelta(minutes=1), product=product(pid="p2"), quantity=1, available=5
    )
    assert revived.status == "active" and forget_alarm(CART) in outcome.cancel_alarms
    _, outcome = alarm(state, forget_alarm(CART), later + timedelta(days=30))
    assert outcome.delete and outcome.state is None  # the row goes; the next read is a new, empty cart
    assert [(e.subject, e.cart.status) for e in outcome.events] == [("events.cart.updated", "expired")]


def test_every_change_raises_the_version_whatever_the_clock_says() -> None:
    state = add(CartState())
    assert state.version == 1
    state, outcome = apply(state, "set_quantity", at=T0 - timedelta(hours=1), product_id="p1", quantity=3, available=9)
    assert state.version == 2 and outcome.reply["version"] == 2  # a server with a slower clock: still newer
    state, _ = alarm(state, abandon_alarm(CART), T0 + timedelta(minutes=30))
    assert (state.status, state.version) == ("abandoned", 3)
    _, outcome = alarm(state, forget_alarm(CART), T0 + timedelta(days=31))
    assert outcome.events[0].cart.version == 4
    with pytest.raises(DomainError):
        apply(state, "add", product=product(), quantity=1000, available=5000)
    assert state.version == 3  # a refused command changes nothing


def test_an_emptied_anonymous_cart_is_forgotten_too() -> None:
    state, _ = apply(add(CartState()), "remove", product_id="p1")
    _, outcome = alarm(state, abandon_alarm(CART), T0 + timedelta(minutes=30))
    assert outcome.state is None and outcome.events == [] and [a.id for a in outcome.alarms] == [forget_alarm(CART)]


def test_alarms_that_no_longer_apply_do_nothing() -> None:
    _, outcome = alarm(CartState(), abandon_alarm(CART), T0)  # empty cart: nothing to abandon
    assert outcome.state is None and outcome.events == []
    signed_in = add(CartState(), email="a@example.test")
    assert signed_in.email == "a@example.test"
    _, outcome = alarm(signed_in, forget_alarm(CART), T0)
    assert not outcome.delete
    state, outcome = alarm(signed_in, abandon_alarm(CART), T0)
    assert state.status == "abandoned" and outcome.alarms == []  # a known shopper's cart is kept
    assert outcome.events[0].email == "a@example.test"


def test_closed_carts_refuse_edits_and_commands_must_match_their_lane() -> None:
    for status in ("merged", "checked_out"):
        with pytest.raises(DomainError) as caught:
            add(CartState(status=status))
        assert caught.value.code == "cart_closed"
    with pytest.raises(DomainError):
        SPEC.handle(
            CartState(),
            LaneCommand(id="x", key="other-cart", kind="clear", body={"cart_id": CART}, sequence=1, issued_at=T0),
        )


def test_outcomes_are_the_same_on_replay() -> None:
    cmd = command("add", product=product(), quantity=1, available=3)
    first, again = SPEC.handle(CartState(), cmd), SPEC.handle(CartState(), cmd)
    assert first.reply == again.reply and [e.id for e in first.events] == [e.id for e in again.events]


def test_events_carry_the_shops_tenant() -> None:
    spec = make_spec(CartTimers(), tenant="shop-7")
    outcome = spec.handle(CartState(), command("add", product=product(), quantity=1, available=5))
    assert [e.tenant for e in outcome.events] == ["shop-7"]
    abandoned = spec.handle(outcome.state, command(ALARM, alarm_id=abandon_alarm(CART)))
    assert [e.tenant for e in abandoned.events] == ["shop-7"]


def test_a_paid_order_checks_its_cart_out_once() -> None:
    state = add(CartState(), email=None)
    closed, outcome = apply(state, "check_out", order_id="ord_1")
    assert closed.status == "checked_out" and closed.version == state.version + 1
    assert [e.subject for e in outcome.events] == ["events.cart.updated", "events.cart.checked_out"]
    assert outcome.events[1].order_id == "ord_1"
    assert abandon_alarm(CART) in outcome.cancel_alarms and [a.id for a in outcome.alarms] == [forget_alarm(CART)]
    again, outcome = apply(closed, "check_out", order_id="ord_1")
    assert again == closed and outcome.events == [] and outcome.state is None
    with pytest.raises(DomainError) as caught:
        add(closed)
    assert caught.value.code == "cart_closed"
    _, outcome = apply(CartState(), "check_out", order_id="ord_2")  # a cart that never existed stays so
    assert outcome.state is None and outcome.events == []
