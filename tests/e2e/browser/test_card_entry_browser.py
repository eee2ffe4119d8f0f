"""Card entry with Stripe.js, offline: the order page loads the embedded payment server's Stripe.js stand-in, the
buyer types a card, sees a decline, passes or fails 3-D Secure, and the order turns paid by Stripe's webhook."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import requests
from playwright.sync_api import expect

from cartwheel.supervisor import System
from tests.e2e.test_cart_http import product

GOOD, DECLINED, THREE_D_SECURE = "4242 4242 4242 4242", "4000 0000 0000 0002", "4000 0025 0000 3155"
PAID_WITHIN = 20_000  # ms: the webhook arrives about 1 s after the payment, the page polls every second


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def place_order(system: System, context: Any) -> tuple[Any, str, Any]:
    """A one-item order placed through the API with the context's cookies; its page open: (page, id, answer)."""
    tea = product(system, stock=3)
    assert context.request.post(f"{system.base_url}/api/cart/items",
                                data={"product_id": tea["id"], "quantity": 1}).status == 200
    placed = context.request.post(f"{system.base_url}/api/checkout", data={})
    assert placed.status == 201, placed.text()
    order_id = placed.json()["order_id"]
    page = context.new_page()
    answer = page.goto(f"{system.base_url}/orders/{order_id}")
    expect(page.locator("#order-status")).to_have_text("awaiting payment")
    return page, order_id, answer


def type_card(page: Any, number: str) -> None:
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiration date").fill("12 / 34")
    page.get_by_label("Security code").fill("123")


def pay_by_card(page: Any, number: str) -> None:
    type_card(page, number)
    page.get_by_role("button", name="Pay").click()


def order(system: System, order_id: str) -> dict[str, Any]:
    found = requests.get(f"{system.base_url}/api/orders/{order_id}", timeout=20,
                         headers={"Authorization": f"Bearer {system.admin_token}"})
    assert found.status_code == 200, found.text
    return found.json()


def expect_paid(page: Any, system: System, order_id: str) -> dict[str, Any]:
    expect(page.locator("#order-status")).to_have_text("paid", timeout=PAID_WITHIN)
    expect(page.locator("#order-done")).to_be_visible()
    paid = order(system, order_id)
    assert (paid["status"], paid["payment"]["status"]) == ("paid", "succeeded")
    return paid


def statuses(found: dict[str, Any]) -> list[str]:
    return [step["status"] for step in found["history"]]


def test_a_typed_card_pays_the_order_with_nothing_but_the_shop_and_the_embedded_server(
    system: System, context: Any, shoot: Any
) -> None:
    stand_in = origin(system.settings.stripe_api_base or "")
    asked: set[str] = set()
    context.on("request", lambda request: asked.add(origin(request.url)))
    page, order_id, answer = place_order(system, context)
    policy = answer.headers["content-security-policy"]
    named = set(re.findall(r"https?://[^\s;]+", policy))
    assert named == {stand_in}, policy  # the stand-in's origin, and no other
    assert f"script-src 'self' {stand_in};" in policy and f"connect-src 'self' {stand_in}" in policy
    assert f"frame-src 'self' {stand_in}" in policy
    shoot(page, "card-form")
    pay_by_card(page, GOOD)
    expect_paid(page, system, order_id)
    shoot(page, "paid")
    secret = page.locator("#pay").get_attribute("data-client-secret")
    key = page.locator("#pay").get_attribute("data-stripe-key")
    retrieved = page.evaluate("async ([key, secret]) => (await Stripe(key).retrievePaymentIntent(secret))"
                              ".paymentIntent.status", [key, secret])
    assert retrieved == "succeeded"
    assert asked == {origin(system.base_url), stand_in}  # offline: nothing else was asked for


def test_a_declined_card_then_a_good_one_on_the_same_order(system: System, context: Any, shoot: Any) -> None:
    page, order_id, _ = place_order(system, context)
    pay_by_card(page, DECLINED)
    expect(page.locator("#payment-error")).to_have_text("Payment declined: Your card was declined.")
    expect(page.locator("#order-status")).to_have_text("payment failed", timeout=PAID_WITHIN)  # Stripe's webhook
    failed = order(system, order_id)
    assert failed["status"] == "payment_failed" and failed["payment"]["last_error"] == "Your card was declined."
    shoot(page, "declined")
    pay_by_card(page, GOOD)  # the same card form, the same order and intent
    paid = expect_paid(page, system, order_id)
    assert statuses(paid)[-2:] == ["payment_failed", "paid"]
    expect(page.locator("#payment-error")).to_be_hidden()


def test_3d_secure_completed_pays(system: System, context: Any, shoot: Any) -> None:
    page, order_id, _ = place_order(system, context)
    pay_by_card(page, THREE_D_SECURE)
    challenge = page.get_by_role("dialog")
    expect(challenge).to_contain_text("3D Secure")
    assert order(system, order_id)["status"] == "awaiting_payment"  # nothing is paid before the bank says so
    shoot(page, "3ds-challenge")
    challenge.get_by_role("button", name="Complete authentication").click()
    expect(challenge).to_be_hidden()
    paid = expect_paid(page, system, order_id)
    assert "payment_failed" not in statuses(paid)


def test_3d_secure_failed_is_not_paid_then_another_card_pays(system: System, context: Any, shoot: Any) -> None:
    page, order_id, _ = place_order(system, context)
    pay_by_card(page, THREE_D_SECURE)
    page.get_by_role("dialog").get_by_role("button", name="Fail authentication").click()
    expect(page.locator("#payment-error")).to_contain_text("unable to authenticate your payment method")
    expect(page.locator("#order-status")).to_have_text("payment failed", timeout=PAID_WITHIN)
    failed = order(system, order_id)
    assert failed["status"] == "payment_failed" and failed["payment"]["last_error"]
    shoot(page, "3ds-failed")
    pay_by_card(page, GOOD)
    paid = expect_paid(page, system, order_id)
    assert statuses(paid)[-2:] == ["payment_failed", "paid"]


def test_an_incomplete_card_is_refused_in_the_page(system: System, context: Any) -> None:
    page, order_id, _ = place_order(system, context)
    page.get_by_label("Card number").fill("4242 4242")
    page.get_by_role("button", name="Pay").click()
    expect(page.locator("#card-problem")).to_have_text("Your card number is incomplete.")
    page.get_by_label("Card number").fill("4242 4242 4242 4241")  # fails the Luhn check
    expect(page.locator("#card-problem")).to_have_text("Your card number is invalid.")
    assert order(system, order_id)["status"] == "awaiting_payment"
