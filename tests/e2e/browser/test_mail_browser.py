"""The shop's mails and downloads in a real browser, on a shop of its own whose carts are abandoned after 3 s and
whose download links last 20 s: a digital product bought by card is downloaded through its link (the same bytes),
its confirmation mail shows at /admin/mail, and the link is refused once expired and once the order is refunded;
a signed-in shopper's abandoned cart gets exactly one reminder, whose link brings the cart back and whose
unsubscribe link works; the admin sends an order's mail again from the order's page."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from cartwheel.supervisor import System
from tests.e2e.browser.test_admin_browser import sign_in
from tests.e2e.browser.test_card_entry_browser import pay_by_card
from tests.e2e.conftest import run_shop
from tests.e2e.test_cart_http import product
from tests.e2e.test_checkout_http import caught, checkout, pay, shopper_with, wait_status

ABANDON_S = 3.0
LINK_S = 20  # time enough for a slow machine to use a link before it expires
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def mail_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    yield from run_shop(tmp_path_factory, "mail shop", cart_abandon_seconds=ABANDON_S, download_link_seconds=LINK_S)


def link_in(mail: dict[str, Any], path: str) -> str:
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
    away.goto(link_in(reminder, "/cart"))
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

    away.goto(link_in(reminder, "/unsubscribe"))
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


def test_a_digital_product_bought_by_card_downloads_whole_and_its_link_closes_on_expiry_and_on_refund(
    mail_shop: System, context: Any, shoot: Any
) -> None:
    admin = {"Authorization": f"Bearer {mail_shop.admin_token}"}
    guide = product(mail_shop, stock=0, name=f"Field guide {uuid.uuid4().hex[:6]}", price_cents=900)
    data = os.urandom(300 * 1024)
    uploaded = requests.put(f"{mail_shop.base_url}/api/admin/products/{guide['id']}/file", data=data, timeout=30,
                            params={"filename": "field-guide.pdf"}, headers=admin | {"Content-Type": "application/pdf"})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["digital"] and uploaded.json()["available"] > 1000  # no stock limit of its own
    to = f"reader-{uuid.uuid4().hex[:8]}@example.com"

    page = context.new_page()
    page.goto(f"{mail_shop.base_url}/products/{guide['id']}")
    page.get_by_role("button", name="Add to cart").click()
    expect(page.locator("#flash")).to_contain_text("1 item")
    page.goto(f"{mail_shop.base_url}/cart")
    page.get_by_label("Email for the receipt").fill(to)
    page.get_by_role("button", name="Place order").click()
    page.wait_for_url("**/orders/*")
    order_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("#downloads-pending")).to_be_visible()
    pay_by_card(page, "4242 4242 4242 4242")
    link = page.get_by_test_id("download")  # the page comes back with the links once the order is paid
    expect(link).to_have_text(guide["name"], timeout=20_000)
    shoot(page, "downloads")
    with page.expect_download() as caught_download:
        link.click()
    download = caught_download.value
    assert download.suggested_filename == "field-guide.pdf"
    assert Path(download.path()).read_bytes() == data

    [confirmation] = caught(mail_shop, to)
    assert confirmation["subject"].endswith("is confirmed") and "Your downloads" in confirmation["text"]
    mailed = link_in(confirmation, "/api/downloads/")
    assert requests.get(mailed, timeout=30).content == data  # the mail's link, from anywhere
    expires = int(re.search(r"expires=(\d+)", mailed).group(1))  # type: ignore[union-attr]
    time.sleep(max(0.0, expires - time.time() + 1))
    expired = requests.get(mailed, timeout=30)
    assert expired.status_code == 410 and "expired" in expired.json()["error"]["message"]

    page.reload()  # a fresh link
    fresh = mail_shop.base_url + page.get_by_test_id("download").get_attribute("href")
    assert requests.get(fresh, timeout=30).content == data
    refund = requests.post(f"{mail_shop.base_url}/api/admin/orders/{order_id}/cancel", headers=admin, timeout=30)
    assert refund.status_code == 200, refund.text
    deadline = time.monotonic() + TIMEOUT
    while requests.get(f"{mail_shop.base_url}/api/orders/{order_id}", headers=admin,
                       timeout=10).json()["status"] != "refunded":
        assert time.monotonic() < deadline, "the order was never refunded"
        time.sleep(0.25)
    refused = requests.get(fresh, timeout=30)
    assert refused.status_code == 410 and "refunded" in refused.json()["error"]["message"]
    page.reload()
    expect(page.locator("#downloads")).to_contain_text("closed (refunded)")
