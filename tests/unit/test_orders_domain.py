"""Order rules without I/O: the state machine, prices against the cart's snapshots, idempotency scopes."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest

from cartwheel.contracts.catalog import Product
from cartwheel.contracts.orders import Checkout, CheckoutItem, OrderLine
from cartwheel.errors import DomainError, status_for
from services.orders.domain import (
    HINT_FRESH_S,
    INTENT_AHEAD_MARGIN,
    TRANSITIONS,
    IllegalTransition,
    StockHints,
    Wanted,
    check_transition,
    late_reservation,
    merge_wanted,
    payment_mismatch,
    price_lines,
    reservation_id,
)
from services.orders.saga import _command_id, _idempotency_scope

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def product(pid: str, price: int = 1000, currency: str = "EUR", active: bool = True) -> Product:
    return Product(id=pid, sku=f"SKU-{pid}", name=f"P {pid}", description="", price_cents=price, currency=currency,
                   active=active, version=1, created_at=NOW, updated_at=NOW)


def test_the_happy_path_is_allowed_and_ended_orders_stay_ended() -> None:
    path = ["pending", "reserved", "awaiting_payment", "paid", "fulfilled", "refunded"]
    for current, to in pairwise(path):
        check_transition(current, to)  # type: ignore[arg-type]
    assert TRANSITIONS["refunded"] == frozenset({"needs_review"})  # only when the refund fails after all
    with pytest.raises(IllegalTransition) as caught:
        check_transition("paid", "cancelled")
    assert caught.value.code == "illegal_transition" and caught.value.details == {"status": "paid",
                                                                                   "requested": "cancelled"}
    with pytest.raises(IllegalTransition):
        check_transition("pending", "paid")  # money for stock never reserved


def test_a_late_payment_may_revive_an_unpaid_end_but_not_a_cancelled_one() -> None:
    for ended in ("expired", "payment_failed"):
        check_transition(ended, "paid")  # type: ignore[arg-type]
        check_transition(ended, "refunded")  # type: ignore[arg-type]
    check_transition("cancelled", "refunded")
    with pytest.raises(IllegalTransition):
        check_transition("cancelled", "paid")


def test_prices_are_today_and_changes_are_listed() -> None:
    products = {"a": product("a", 1000), "b": product("b", 250)}
    lines, changes, currency = price_lines([Wanted("a", 2, 900), Wanted("b", 1, 250)], products)
    assert [(line.unit_price_cents, line.line_total_cents) for line in lines] == [(1000, 2000), (250, 250)]
    assert [(c.product_id, c.old_unit_price_cents, c.new_unit_price_cents) for c in changes] == [("a", 900, 1000)]
    assert currency == "EUR"
    _, changes, _ = price_lines([Wanted("a", 1)], products)  # buy-now has no snapshot to differ from
    assert changes == []


def test_a_line_of_a_product_with_a_file_is_digital() -> None:
    products = {"a": product("a"), "f": product("f").model_copy(update={"file_sha256": "ab" * 32})}
    lines, _, _ = price_lines([Wanted("a", 1), Wanted("f", 1)], products)
    assert [(line.product_id, line.digital) for line in lines] == [("a", False), ("f", True)]


@pytest.mark.parametrize(
    ("products", "code"),
    [
        ({}, "not_found"),
        ({"a": product("a", active=False)}, "not_for_sale"),
    ],
)
def test_gone_or_inactive_products_are_refused(products: dict[str, Product], code: str) -> None:
    with pytest.raises(DomainError) as caught:
        price_lines([Wanted("a", 1)], products)
    assert caught.value.code == code


def test_one_currency_per_order() -> None:
    with pytest.raises(DomainError) as caught:
        price_lines([Wanted("a", 1), Wanted("b", 1)], {"a": product("a"), "b": product("b", currency="USD")})
    assert caught.value.code == "currency_mismatch"


def test_an_order_that_costs_nothing_is_refused_before_anything_is_reserved() -> None:
    # Checking out a cart of one product priced 0 was a 500: the saga reserved it, then could not ask
    # payments for an intent of 0 (CreateIntent's amount_cents >= 1), and the reservation stayed held.
    free, mug = product("a", 0), product("b", 900)
    with pytest.raises(DomainError) as caught:
        price_lines([Wanted("a", 3)], {"a": free})
    assert caught.value.code == "nothing_to_pay" and status_for(caught.value.code) == 422
    lines, _, _ = price_lines([Wanted("a", 1), Wanted("b", 1)], {"a": free, "b": mug})  # a free gift with a mug
    assert [line.line_total_cents for line in lines] == [0, 900]


def test_a_product_named_by_its_sku_is_priced_under_its_id_and_one_named_both_ways_is_one_line() -> None:
    mug = product("a", 900)
    alone, _, _ = price_lines([Wanted("SKU-a", 1)], {"SKU-a": mug})  # a KeyError before (500 internal_error)
    assert [(line.product_id, line.quantity) for line in alone] == [("a", 1)]
    lines, _, currency = price_lines([Wanted("SKU-a", 2), Wanted("a", 1)], {"SKU-a": mug, "a": mug})
    assert [(line.product_id, line.sku, line.quantity, line.line_total_cents) for line in lines] == [
        ("a", "SKU-a", 3, 2700)]  # two lines of one product before
    assert currency == "EUR"


def test_a_payment_settles_an_order_only_in_its_amount_and_currency() -> None:
    assert payment_mismatch(2400, "EUR", 2400, "eur") is None
    assert payment_mismatch(2400, "EUR", None, None) is None  # an event from before amounts were sent
    assert payment_mismatch(2400, "EUR", 1, "jpy") == "the payment took in 1 JPY for an order of 2400 EUR"
    assert payment_mismatch(2400, "EUR", 2400, "USD") is not None
    assert payment_mismatch(2400, "EUR", 2399, "EUR") is not None
    for held in ("reserved", "awaiting_payment", "expired", "payment_failed"):
        check_transition(held, "needs_review")  # type: ignore[arg-type]
    assert TRANSITIONS["needs_review"] == frozenset({"refunded", "cancelled"})  # a person decides


def test_repeated_products_are_one_line() -> None:
    assert merge_wanted([Wanted("a", 1, 5), Wanted("b", 2), Wanted("a", 3, 7)]) == [Wanted("a", 4, 5), Wanted("b", 2)]


def test_reservations_and_command_ids_are_derived_from_the_order() -> None:
    assert reservation_id("ord_1") == "ord_1" and late_reservation("ord_1") == "ord_1.late"
    assert _command_id("ord_1.late", "reserve", "p-9") == "ord_1-late-reserve-p-9"  # a lane command id has no dots


def test_an_idempotency_key_belongs_to_its_buyer() -> None:
    item = [CheckoutItem(product_id="a", quantity=1)]
    assert _idempotency_scope(Checkout(items=item)) is None
    user = _idempotency_scope(Checkout(items=item, user_id="u1", idempotency_key="k"))
    cart = _idempotency_scope(Checkout(cart_id="c1", idempotency_key="k"))
    visitor = _idempotency_scope(Checkout(items=item, visitor_id="v1", idempotency_key="k"))
    other_visitor = _idempotency_scope(Checkout(items=item, visitor_id="v2", idempotency_key="k"))
    assert len({user, cart, visitor, other_visitor}) == 4
    assert visitor == _idempotency_scope(Checkout(items=item, visitor_id="v1", idempotency_key="k"))
    # Nobody to scope it to: not the body, which anyone may replay (issue 13, finding 6).
    assert _idempotency_scope(Checkout(items=item, idempotency_key="k")) is None


def _line(product_id: str, quantity: int) -> OrderLine:
    return OrderLine(product_id=product_id, sku="S", name="N", unit_price_cents=100, quantity=quantity,
                     line_total_cents=100 * quantity)


def test_stock_hints_ask_for_the_intent_early_only_with_plenty_left_beyond_what_is_being_reserved() -> None:
    hints = StockHints()
    mug = [_line("mug", 2)]
    assert not hints.plenty(mug, now=0.0)  # never heard of
    hints.heard("mug", INTENT_AHEAD_MARGIN + 2, now=0.0)
    assert hints.plenty(mug, now=1.0)
    assert not hints.plenty(mug, now=HINT_FRESH_S + 0.5)  # too old to go by
    hints.begin(mug)  # two units are being reserved, their answer not heard yet
    assert not hints.plenty(mug, now=1.0)
    hints.end(mug)
    assert hints.plenty(mug, now=1.0) and hints.ahead == {}
    hints.heard("mug", None, now=1.5)  # a reply that says nothing of the stock changes nothing
    assert hints.seen["mug"] == (INTENT_AHEAD_MARGIN + 2, 0.0)
    hints.heard("plate", 500, now=1.0)
    assert not hints.plenty([*mug, _line("cup", 1), _line("plate", 1)], now=1.0)  # every line must be known
