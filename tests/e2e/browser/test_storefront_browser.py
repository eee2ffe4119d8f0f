"""A shopper in a real browser: browse, add two products, the cart moves in a second tab, pay by card, the order
turns paid (declines and 3-D Secure: test_card_entry_browser.py)."""

from __future__ import annotations

import uuid
from typing import Any

import requests
from playwright.sync_api import expect

from cartwheel.supervisor import System
from tests.e2e.browser.test_card_entry_browser import pay_by_card
from tests.e2e.test_cart_http import product


def test_a_shopper_buys_two_products_with_the_cart_live_in_a_second_tab(
    system: System, context: Any, shoot: Any
) -> None:
    word = f"kettle{uuid.uuid4().hex[:8]}"
    first = product(system, stock=10, name=f"Copper {word}", price_cents=2500)
    product(system, stock=10, name=f"Steel {word}", price_cents=1900)
    shop = context.new_page()
    shop.goto(f"{system.base_url}/")
    shop.get_by_role("searchbox", name="Search products").fill(word)
    shop.get_by_role("button", name="Search").click()
    cards = shop.get_by_test_id("product-card")
    expect(cards).to_have_count(2)
    expect(cards.filter(has_text="Copper")).to_contain_text("€25.00")
    shoot(shop, "search")
    badge = shop.get_by_test_id("header-cart-count")
    expect(badge).to_be_hidden()  # no cart yet
    cards.filter(has_text="Copper").get_by_role("button", name="Add to cart").click()
    expect(shop.locator("#flash")).to_contain_text("(1 item)")  # not "1 items"
    expect(badge).to_have_text("(1)")
    cards.filter(has_text="Steel").get_by_role("button", name="Add to cart").click()
    expect(shop.locator("#flash")).to_contain_text("2 items")
    expect(badge).to_have_text("(2)")

    cart = context.new_page()  # a second tab: the same cookies
    cart.goto(f"{system.base_url}/cart")
    expect(cart.get_by_test_id("cart-count")).to_have_text("2 items")
    expect(cart.get_by_test_id("header-cart-count")).to_have_text("(2)")
    shoot(cart, "cart")
    shop.goto(f"{system.base_url}/products/{first['id']}")
    shoot(shop, "product")
    shop.get_by_label("Quantity").fill("2")
    shop.get_by_role("button", name="Add to cart").click()
    expect(cart.get_by_test_id("cart-count")).to_have_text("4 items")  # no reload: the cart's event stream
    expect(cart.get_by_test_id("cart-total")).to_have_text("€94.00")
    expect(cart.get_by_test_id("header-cart-count")).to_have_text("(4)")
    expect(shop.get_by_test_id("header-cart-count")).to_have_text("(4)")  # the product page's header, live too
    cart.get_by_label(f"Quantity of Steel {word}").fill("2")
    cart.get_by_label(f"Quantity of Steel {word}").press("Tab")
    expect(cart.get_by_test_id("cart-count")).to_have_text("5 items")
    expect(shop.get_by_test_id("header-cart-count")).to_have_text("(5)")  # another tab's change
    shoot(cart, "cart-live")

    cart.evaluate("window.stayedOnPage = true")
    cart.get_by_role("button", name="Place order").click()
    cart.wait_for_url("**/orders/*")
    expect(cart.locator("#order-status")).to_have_text("awaiting payment")
    shoot(cart, "order")
    cart.evaluate("window.stayedOnPage = true")
    pay_by_card(cart, "4242 4242 4242 4242")  # typed into Stripe.js's card element (offline: the stand-in's)
    expect(cart.locator("#order-status")).to_have_text("paid", timeout=20_000)
    expect(cart.locator("#order-done")).to_be_visible()
    assert cart.evaluate("window.stayedOnPage") is True  # the status moved without a reload
    shoot(cart, "paid")


def test_out_of_stock_and_sign_up_in_the_browser(system: System, context: Any, shoot: Any) -> None:
    scarce = product(system, stock=1)
    page = context.new_page()
    page.goto(f"{system.base_url}/products/{scarce['id']}")
    page.get_by_label("Quantity").fill("3")
    page.get_by_role("button", name="Add to cart").click()
    expect(page.locator("#flash")).to_contain_text("Only 1 left")
    page.get_by_label("Quantity").fill("1")
    page.get_by_role("button", name="Add to cart").click()
    expect(page.locator("#flash")).to_contain_text("1 item")
    page.goto(f"{system.base_url}/signin")
    form = page.locator("form[data-action=sign-up]")
    form.get_by_label("Email").fill(f"shopper-{uuid.uuid4().hex[:8]}@example.com")
    form.get_by_label("Password").fill("short")
    form.get_by_role("button", name="Create account").click()
    expect(form.locator("[data-error-for=password]")).not_to_be_empty()
    shoot(page, "signup-refused")
    form.get_by_label("Password").fill("correct horse battery")
    form.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/cart")
    expect(page.get_by_test_id("who")).to_contain_text("@example.com")
    expect(page.get_by_test_id("cart-count")).to_have_text("1 item")  # the visitor's cart came along
    shoot(page, "signed-in-cart")


def test_a_price_change_is_shown_and_can_be_accepted(system: System, context: Any, shoot: Any) -> None:
    lamp = product(system, stock=5, name="Desk lamp", price_cents=4000)
    page = context.new_page()
    page.goto(f"{system.base_url}/products/{lamp['id']}")
    page.get_by_role("button", name="Add to cart").click()
    expect(page.locator("#flash")).to_contain_text("1 item")
    changed = requests.patch(f"{system.base_url}/api/admin/products/{lamp['id']}", json={"price_cents": 4500},
                             headers={"Authorization": f"Bearer {system.admin_token}"}, timeout=20)
    assert changed.status_code == 200, changed.text
    page.goto(f"{system.base_url}/cart")
    page.get_by_role("button", name="Place order").click()
    problem = page.locator("#checkout-problem")
    expect(problem).to_contain_text("Desk lamp: was €40.00, now €45.00")
    shoot(page, "price-changed")
    problem.get_by_role("button", name="Accept new prices").click()
    page.wait_for_url("**/orders/*")
    expect(page.locator("#order")).to_contain_text("€45.00")


def test_the_demo_catalog_shows_a_picture_of_every_product(system: System, context: Any, shoot: Any) -> None:
    page = context.new_page()
    page.goto(f"{system.base_url}/?category=apparel")  # demo products only: the tests' own have no category
    cards = page.get_by_test_id("product-card")
    expect(cards).to_have_count(5)
    pictures = page.locator("[data-testid=product-card] img")
    expect(pictures).to_have_count(5)
    for picture in pictures.all():
        picture.scroll_into_view_if_needed()
        expect(picture).to_have_js_property("complete", True)
        assert picture.evaluate("img => img.naturalWidth") == 800  # decoded: the demo picture, not a broken link
    expect(cards.first).to_contain_text("€")
    shoot(page, "storefront")
