"""Hosted checkout, offline: the buyer leaves the shop for the embedded server's checkout page, pays there (after a
decline) or walks away, and comes back to an order that Stripe's webhooks moved."""

from __future__ import annotations

import re
from typing import Any

import requests
from playwright.sync_api import expect

from cartwheel.supervisor import System
from tests.e2e.browser.test_card_entry_browser import DECLINED, GOOD, PAID_WITHIN, order, origin, statuses
from tests.e2e.test_cart_http import product


def leave_for_the_checkout_page(system: System, context: Any) -> tuple[Any, dict[str, Any]]:
    """A one-item cart checked out from its page with "Pay on Stripe's checkout page": (the page, the product)."""
    tea = product(system, stock=3)
    assert context.request.post(f"{system.base_url}/api/cart/items",
                                data={"product_id": tea["id"], "quantity": 2}).status == 200
    page = context.new_page()
    page.goto(f"{system.base_url}/cart")
    page.get_by_role("button", name="Pay on Stripe's checkout page").click()
    stand_in = origin(system.settings.stripe_api_base or "")
    page.wait_for_url(re.compile(re.escape(stand_in) + r"/c/pay/cs_"))
    expect(page.get_by_text(tea["name"])).to_be_visible()
    return page, tea


def pay_on_the_page(page: Any, number: str) -> None:
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiry (MM/YY)").fill("12/34")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Pay").click()


def order_id_of(page: Any) -> str:
    found = re.search(r"/orders/([^/?#]+)", page.url)
    assert found, page.url
    return found[1]


def stock_of(system: System, product_id: str) -> dict[str, Any]:
    found = requests.get(f"{system.base_url}/api/admin/inventory/{product_id}", timeout=20,
                         headers={"Authorization": f"Bearer {system.admin_token}"})
    assert found.status_code == 200, found.text
    return found.json()


def test_hosted_checkout_completed_after_a_decline(system: System, context: Any, shoot: Any) -> None:
    page, tea = leave_for_the_checkout_page(system, context)
    shoot(page, "checkout-page")
    pay_on_the_page(page, DECLINED)
    expect(page.get_by_role("alert")).to_contain_text("Your card was declined.")
    pay_on_the_page(page, GOOD)
    page.wait_for_url(re.compile(re.escape(system.base_url) + r"/orders/[^?]+\?checkout=done"))
    order_id = order_id_of(page)
    expect(page.locator("#order-status")).to_have_text("paid", timeout=PAID_WITHIN)  # by Stripe's webhook
    expect(page.locator("#order-done")).to_be_visible()
    expect(page.locator("#hosted-payment")).to_be_hidden()
    shoot(page, "back-paid")
    paid = order(system, order_id)
    assert (paid["status"], paid["payment"]["status"], paid["total_cents"]) == ("paid", "succeeded",
                                                                                2 * tea["price_cents"])
    assert paid["payment"]["payment_intent_id"] and paid["payment"]["checkout_url"] is None
    assert statuses(paid) == ["pending", "reserved", "awaiting_payment", "paid"]
    assert stock_of(system, tea["id"])["on_hand"] == 1  # committed


def test_hosted_checkout_abandoned_keeps_the_stock_until_the_page_closes_then_lets_it_go(
    system: System, context: Any, shoot: Any
) -> None:
    page, tea = leave_for_the_checkout_page(system, context)
    page.get_by_role("link", name="Back to the shop").click()
    page.wait_for_url(re.compile(re.escape(system.base_url) + r"/orders/[^?]+\?checkout=cancelled"))
    order_id = order_id_of(page)
    expect(page.locator("#hosted-returned")).to_contain_text("You left Stripe's checkout page without paying")
    expect(page.locator("#hosted-payment").get_by_role("link")).to_be_visible()  # the way back to the page
    shoot(page, "back-unpaid")
    waiting = order(system, order_id)
    assert waiting["status"] == "awaiting_payment" and stock_of(system, tea["id"])["reserved"] == 2
    session_id = waiting["payment"]["checkout_session_id"]
    # Stripe closes the page at its expires_at (half an hour on): here the shop's own call does it now.
    closed = requests.post(f"{system.settings.stripe_api_base}/v1/checkout/sessions/{session_id}/expire", timeout=20,
                           auth=(system.settings.stripe_secret_key.get_secret_value(), ""))  # type: ignore[union-attr]
    assert closed.status_code == 200, closed.text
    expect(page.locator("#order-status")).to_have_text("expired", timeout=PAID_WITHIN)  # checkout.session.expired
    expect(page.locator("#hosted-payment")).to_be_hidden()
    assert stock_of(system, tea["id"])["reserved"] == 0
    assert statuses(order(system, order_id))[-1] == "expired"
