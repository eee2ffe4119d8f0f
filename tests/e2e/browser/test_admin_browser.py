"""An admin in a real browser: create a product (and its image), restock it, see it in the shop; refund an order."""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from cartwheel.supervisor import System
from tests.e2e.test_cart_http import product
from tests.e2e.test_checkout_http import checkout, pay, shopper_with, wait_status

TIMEOUT = 20


def png(width: int = 8, height: int = 6) -> bytes:
    """A small valid PNG, orange."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x80\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def has_image_route(system: System) -> bool:
    paths = requests.get(f"{system.base_url}/openapi.json", timeout=TIMEOUT).json()["paths"]
    return "/api/admin/products/{id}/image" in paths


def sign_in(page: Any, system: System) -> None:
    page.goto(f"{system.base_url}/admin")
    page.get_by_label("Admin token").fill(system.admin_token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/products")
    assert system.admin_token not in page.url


def test_an_admin_creates_restocks_and_sells_a_product(
    system: System, context: Any, shoot: Any, tmp_path: Path
) -> None:
    page = context.new_page()
    sign_in(page, system)
    shoot(page, "products")
    page.get_by_role("link", name="New product").click()
    name, sku = f"Teapot {uuid.uuid4().hex[:8]}", f"teapot-{uuid.uuid4().hex[:8]}"
    page.get_by_label("SKU").fill(sku)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Price in cents").fill("-5")
    page.get_by_label("Currency").fill("EUR")
    page.get_by_role("button", name="Create product").click()
    expect(page.locator("#e-price_cents")).to_be_visible()  # the API's refusal, next to the field
    shoot(page, "refused")
    page.get_by_label("Price in cents").fill("3200")
    page.get_by_role("button", name="Create product").click()
    expect(page.get_by_role("status")).to_have_text("Product created.")
    if has_image_route(system):
        notes = tmp_path / "notes.png"
        notes.write_text("not an image, whatever its name says")
        page.get_by_label("PNG, JPEG or WebP").set_input_files(str(notes))
        page.get_by_role("button", name="Upload image").click()
        expect(page.locator("#e-image")).to_be_visible()  # the API's 415, next to the file field
        image = tmp_path / "teapot.png"
        image.write_bytes(png())
        page.get_by_label("PNG, JPEG or WebP").set_input_files(str(image))
        page.get_by_role("button", name="Upload image").click()
        expect(page.get_by_role("status")).to_have_text("Image uploaded.")
        expect(page.get_by_role("img", name=name)).to_be_visible()
    else:
        print("browser: the image route is not in this gateway yet; the upload step was left out")
    page.get_by_label("Add units").fill("6")
    page.get_by_role("button", name="Restock").click()
    expect(page.get_by_test_id("on-hand")).to_have_text("6")
    shoot(page, "product")
    page.get_by_role("link", name="Inventory").click()
    expect(page.locator("tr", has_text=sku)).to_contain_text("6")
    shoot(page, "inventory")

    shop = context.new_page()
    shop.goto(f"{system.base_url}/?q={sku}")
    card = shop.get_by_test_id("product-card").filter(has_text=name)
    expect(card).to_contain_text("€32.00")
    expect(card).to_contain_text("In stock")
    shoot(shop, "storefront")


def test_an_admin_refunds_a_paid_order(system: System, context: Any, shoot: Any) -> None:
    mug = product(system, stock=4, name="Refund mug")
    buyer = shopper_with(system, mug["id"], 2)
    order_id = checkout(buyer, system, json={}).json()["order_id"]
    assert pay(buyer, system, order_id, "pm_card_visa").status_code == 200
    wait_status(buyer, system, order_id, "paid")

    page = context.new_page()
    sign_in(page, system)
    page.get_by_role("link", name="Orders").click()
    page.get_by_label("Status").select_option("paid")
    page.wait_for_url("**/admin/orders?status=paid")
    shoot(page, "orders")
    page.get_by_role("link", name=order_id).click()
    expect(page.locator("#order-status")).to_have_text("paid")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel and refund").click()
    expect(page.locator("#order-status")).to_have_text("refunded", timeout=20_000)
    expect(page.locator(".history")).to_contain_text("refunded")
    shoot(page, "refunded")


@pytest.mark.parametrize("path", ["/admin/products", "/admin/orders", "/admin/carts"])
def test_admin_pages_send_a_stranger_to_sign_in(system: System, context: Any, path: str) -> None:
    page = context.new_page()
    page.goto(f"{system.base_url}{path}")
    expect(page.get_by_label("Admin token")).to_be_visible()
