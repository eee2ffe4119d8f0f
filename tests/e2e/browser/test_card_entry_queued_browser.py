"""Card entry for an order whose PaymentIntent is queued behind Stripe's rate limit, in a second shop whose payments
call Stripe once in 4 s: the order page says "Preparing payment…", then takes the card once a poll brings the client
secret."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from cartwheel.supervisor import System
from tests.e2e.browser.test_card_entry_browser import GOOD, PAID_WITHIN, expect_paid, pay_by_card
from tests.e2e.test_cart_http import product


@pytest.fixture(scope="module")
def chromium(paced_shop: System, chromium: Any) -> Any:
    """The browser, launched after the paced shop is up: a shop starts with asyncio.run, which Playwright's event
    loop in this thread would refuse."""
    return chromium


def test_an_order_whose_intent_is_queued_says_preparing_then_takes_the_card(
    paced_shop: System, context: Any, shoot: Any
) -> None:
    tea = product(paced_shop, stock=5)
    other = requests.Session()  # another buyer's checkout takes the call to Stripe there is now
    assert other.post(f"{paced_shop.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1},
                      timeout=20).status_code == 200
    assert other.post(f"{paced_shop.base_url}/api/checkout", json={}, timeout=20).status_code == 201
    assert context.request.post(f"{paced_shop.base_url}/api/cart/items",
                                data={"product_id": tea["id"], "quantity": 1}).status == 200
    placed = context.request.post(f"{paced_shop.base_url}/api/checkout", data={})
    assert placed.status == 201, placed.text()
    queued = placed.json()
    assert (queued["status"], queued["payment"]["status"], queued["payment"]["client_secret"]) == (
        "reserved", "queued", None)
    page = context.new_page()
    page.goto(f"{paced_shop.base_url}/orders/{queued['order_id']}")
    expect(page.get_by_text("Preparing payment…")).to_be_visible()
    expect(page.get_by_role("button", name="Pay")).to_be_disabled()
    expect(page.get_by_label("Card number")).to_have_count(0)
    shoot(page, "preparing")
    expect(page.get_by_label("Card number")).to_be_visible(timeout=PAID_WITHIN)  # a poll brought the secret
    expect(page.get_by_text("Preparing payment…")).to_be_hidden()
    expect(page.locator("#order-status")).to_have_text("awaiting payment")
    pay_by_card(page, GOOD)
    expect_paid(page, paced_shop, queued["order_id"])
