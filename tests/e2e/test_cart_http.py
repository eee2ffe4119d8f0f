"""The cart over HTTP through the real gateway, cart, catalog and inventory services."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from cartwheel.supervisor import System
from tests.helpers import random_sku

TIMEOUT = 10


def product(system: System, stock: int = 50, **fields: Any) -> dict[str, Any]:
    body = {"sku": random_sku(), "name": "Tea", "price_cents": 450, "currency": "EUR", "stock": stock, **fields}
    made = requests.post(
        f"{system.base_url}/api/admin/products",
        json=body,
        timeout=TIMEOUT,
        headers={"Authorization": f"Bearer {system.admin_token}"},
    ).json()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # inventory creates the stock row from the product_created event
        if requests.get(f"{system.base_url}/api/products/{made['id']}", timeout=TIMEOUT).json()["available"] == stock:
            return made
        time.sleep(0.1)
    raise AssertionError("the product's stock never showed up")


def test_a_shopper_fills_a_cart_across_requests(system: System) -> None:
    tea = product(system)
    shopper = requests.Session()
    empty = shopper.get(f"{system.base_url}/api/cart", timeout=TIMEOUT)
    assert empty.json()["items"] == [] and "cart" not in shopper.cookies  # reading creates nothing
    added = shopper.post(
        f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 2}, timeout=TIMEOUT
    )
    assert added.status_code == 200, added.text
    assert "HttpOnly" in added.headers["Set-Cookie"] and "SameSite=Lax" in added.headers["Set-Cookie"]
    changed = shopper.patch(f"{system.base_url}/api/cart/items/{tea['id']}", json={"quantity": 5}, timeout=TIMEOUT)
    assert changed.json()["total_cents"] == 5 * 450
    too_many = shopper.patch(f"{system.base_url}/api/cart/items/{tea['id']}", json={"quantity": 51}, timeout=TIMEOUT)
    assert too_many.status_code == 409 and too_many.json()["error"]["available"] == 50
    assert shopper.get(f"{system.base_url}/api/cart", timeout=TIMEOUT).json()["item_count"] == 5


def test_many_tabs_at_once_lose_no_update(system: System) -> None:
    tea = product(system)
    tabs = requests.Session()
    tabs.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1}, timeout=TIMEOUT)
    cookie = tabs.cookies["cart"]

    def add_one(_: int) -> int:
        return requests.post(
            f"{system.base_url}/api/cart/items",
            json={"product_id": tea["id"], "quantity": 1},
            cookies={"cart": cookie},
            timeout=TIMEOUT,
        ).status_code

    with ThreadPoolExecutor(20) as pool:
        assert set(pool.map(add_one, range(20))) == {200}
    assert tabs.get(f"{system.base_url}/api/cart", timeout=TIMEOUT).json()["item_count"] == 21


def test_a_tampered_cookie_gets_a_new_empty_cart(system: System) -> None:
    tea = product(system)
    owner = requests.Session()
    owner.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1}, timeout=TIMEOUT)
    forged = owner.cookies["cart"][:-2] + ("AA" if not owner.cookies["cart"].endswith("AA") else "BB")
    stranger = requests.get(f"{system.base_url}/api/cart", cookies={"cart": forged}, timeout=TIMEOUT).json()
    assert stranger["items"] == [] and stranger["id"] is None
    assert owner.get(f"{system.base_url}/api/cart", timeout=TIMEOUT).json()["item_count"] == 1
