"""The shop's mails in a real browser, on a shop of its own whose carts are abandoned after 3 s: a signed-in
shopper's abandoned cart gets exactly one reminder, whose link brings the cart back and whose unsubscribe link
works; a paid order's confirmation shows at /admin/mail, and the admin sends it again from the order's page."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from cartwheel.supervisor import System
from tests.e2e.browser.test_admin_browser import sign_in
from tests.e2e.conftest import run_shop
from tests.e2e.test_cart_http import product
from tests.e2e.test_checkout_http import checkout, pay, shopper_with, wait_status

ABANDON_S = 3.0
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def mail_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    yield from run_shop(tmp_path_factory, "mail shop", cart_abandon_seconds=ABANDON_S)


def caught(shop: System, to: str, count: int = 1) -> list[dict[str, Any]]:
    """The catcher's mails to ``to`` once it holds ``count`` (or what it holds after the wait)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        mails = requests.get(f"{shop.base_url}/api/admin/mail", params={"to": to}, timeout=10,
                             headers={"Authorization": f"Bearer {shop.admin_token}"}).json()["items"]
        if len(mails) >= count or time.monotonic() > deadline:
            return mails
        time.sleep(0.25)


def link(mail: dict[str, Any], path: str) -> str:
    found = re.search(rf"(http://\S+{re.escape(path)}\S*)", mail["text"])
    assert found, f"no {path} link in {mail['text']!r}"
    return found.group(1)


def test_an_abandoned_signed_in_cart_gets_one_reminder_that_brings_the_cart_back_and_can_be_turned_off(
    mail_shop: System, context: Any, chromium: Any, shoot: Any
) -> None:
    lamp = product(mail_shop, stock=5, name=f"Reading lamp {uuid.uuid4().hex[:6]}", price_cents=3900)
    email, password = f"shopper-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery"
    page = context.new_page()
    page.goto(f"{mail_shop.base_url}/signin")
    form = page.locator("form[data-action=sign-up]")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Create account").click()
    expect(page.get_by_test_id("who")).to_contain_text(email)
    page.goto(f"{mail_shop.base_url}/products/{lamp['id']}")
    page.get_by_role("button", name="Add to cart").click()
    expect(page.locator("#flash")).to_contain_text("1 item")

    [reminder] = caught(mail_shop, email)
    assert reminder["subject"] == "You left 1 item in your cart" and "€39.00" in reminder["text"]
    time.sleep(2 * ABANDON_S)  # the cart's alarm had time to fire again: still one reminder
    assert len(caught(mail_shop, email)) == 1

    admin = chromium.new_context(viewport={"width": 1100, "height": 800}).new_page()
    sign_in(admin, mail_shop)
    admin.get_by_role("link", name="Mail").click()
    mail = admin.get_by_test_id("caught-mail").filter(has_text="You left 1 item in your cart")
    expect(mail).to_have_count(1)
    mail.locator("summary").click()
    expect(mail.locator(".mail-text")).to_contain_text(lamp["name"])
    shoot(admin, "admin-mail")

    away = chromium.new_context(viewport={"width": 1100, "height": 800}).new_page()  # another device, signed out
    away.goto(link(reminder, "/cart"))
    empty = away.get_by_test_id("cart-empty")
    expect(empty).to_be_visible()
    empty.get_by_role("link", name="sign in").click()
    signin = away.locator("form[data-action=sign-in]")
    signin.get_by_label("Email").fill(email)
    signin.get_by_label("Password").fill(password)
    signin.get_by_role("button", name="Sign in").click()
    away.wait_for_url("**/cart")
    expect(away.get_by_test_id("cart-count")).to_have_text("1 item")  # the cart left behind, back
    expect(away.locator("#cart")).to_contain_text(lamp["name"])
    expect(away.get_by_role("button", name="Place order")).to_be_visible()  # it can be bought at once ...
    expect(away.get_by_test_id("header-cart-count")).to_have_text("(1)")  # ... and counts (it said 0 once)
    shoot(away, "cart-back")

    away.goto(link(reminder, "/unsubscribe"))
    away.get_by_role("button", name="No more cart reminders").click()
    expect(away.get_by_test_id("unsubscribed")).to_contain_text(email)
    shoot(away, "unsubscribed")
    away.context.close()
    admin.context.close()


def test_a_paid_orders_confirmation_shows_at_admin_mail_and_is_sent_again_from_the_order(
    mail_shop: System, context: Any, shoot: Any
) -> None:
    mug = product(mail_shop, stock=4, name="Mail mug", price_cents=1250)
    to = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    buyer = shopper_with(mail_shop, mug["id"], 2)
    order_id = checkout(buyer, mail_shop, json={"email": to}).json()["order_id"]
    assert pay(buyer, mail_shop, order_id, "pm_card_visa").status_code == 200
    wait_status(buyer, mail_shop, order_id, "paid")
    [confirmation] = caught(mail_shop, to)
    assert confirmation["subject"].endswith("is confirmed") and "2 x Mail mug  €25.00" in confirmation["text"]

    page = context.new_page()
    sign_in(page, mail_shop)
    page.goto(f"{mail_shop.base_url}/admin/orders/{order_id}")
    rows = page.get_by_test_id("order-mail")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("sent")
    rows.first.get_by_role("button", name="Send again").click()
    expect(page.get_by_role("status")).to_contain_text("The mail was sent again.")
    expect(rows).to_have_count(2)
    shoot(page, "admin-order-mails")
    assert len(caught(mail_shop, to, count=2)) == 2
