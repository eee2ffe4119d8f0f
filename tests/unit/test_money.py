"""Amounts in the shop's units and in Stripe's, and the prices Stripe cannot charge."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cartwheel.contracts.catalog import ProductDraft
from cartwheel.money import from_stripe, to_stripe, unchargeable


@pytest.mark.parametrize(
    ("currency", "ours", "stripes"),
    [
        ("EUR", 1250, 1250),  # 12.50 EUR
        ("JPY", 500, 500),  # zero-decimal for both
        ("ISK", 5000, 500000),  # 5,000 ISK: whole krónur, yet Stripe counts hundredths (sent as 5000 before)
        ("UGX", 5000, 500000),  # the same special case
        ("MGA", 500000, 5000),  # 5,000.00 MGA: Stripe's zero-decimal (sent as 500000 before)
        ("KWD", 5120, 5120),  # 5.120 KWD: thousandths for both
        ("HUF", 12345, 12345),  # two decimals in charges (whole only in payouts)
    ],
)
def test_amounts_go_to_stripe_in_its_units_and_come_back_in_ours(currency: str, ours: int, stripes: int) -> None:
    assert to_stripe(ours, currency) == stripes
    assert from_stripe(stripes, currency) == ours
    assert unchargeable(ours, currency) is None


@pytest.mark.parametrize(
    ("currency", "amount", "why"),
    [
        ("MGA", 12345, "must end in 00"),  # 123.45 MGA: Stripe takes whole ariary
        ("KWD", 5124, "must end in 0"),  # 5.124 KWD: Stripe's partners take it rounded to 5.120 or 5.130
        ("TND", 1001, "must end in 0"),
    ],
)
def test_a_price_stripe_cannot_charge_is_refused_when_the_product_is_saved(currency: str, amount: int,
                                                                             why: str) -> None:
    problem = unchargeable(amount, currency)
    assert problem is not None and why in problem
    with pytest.raises(ValueError, match=why):
        to_stripe(amount, currency)
    with pytest.raises(ValidationError, match=why):  # a 422 at the gateway; before, a failure at checkout
        ProductDraft(sku="X-1", name="Mug", price_cents=amount, currency=currency)
    ProductDraft(sku="X-1", name="Mug", price_cents=amount - amount % 100, currency=currency)
