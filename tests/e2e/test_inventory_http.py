"""Stock over HTTP through the whole shop: catalog event → inventory lane → queries → gateway."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from cartwheel.supervisor import System
from tests.e2e.test_catalog_http import TIMEOUT, admin, create


def eventually(read: Callable[[], Any], wanted: Any, timeout: float = 10.0) -> Any:
    """Inventory learns of a new product from an event: give it a moment."""
    deadline = time.monotonic() + timeout
    while (value := read()) != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_the_demo_catalog_has_stock(system: System) -> None:
    items = requests.get(f"{system.base_url}/api/products", params={"limit": 100}, timeout=TIMEOUT).json()["items"]
    demo = [p for p in items if p["sku"].startswith("CW-")]
    assert len(demo) == 12 and all(isinstance(p["available"], int) for p in demo)
    mug = requests.get(f"{system.base_url}/api/admin/inventory/CW-MUG-01", headers=admin(system), timeout=TIMEOUT)
    assert mug.status_code == 200 and mug.json()["on_hand"] > 0


def test_a_new_products_stock_through_its_life(system: System) -> None:
    made = create(system, stock=7)
    product_url = f"{system.base_url}/api/products/{made['id']}"
    stock_url = f"{system.base_url}/api/admin/inventory/{made['id']}"
    assert eventually(lambda: requests.get(product_url, timeout=TIMEOUT).json()["available"], 7) == 7
    assert requests.get(stock_url, headers=admin(system), timeout=TIMEOUT).json() == {
        "product_id": made["id"],
        "on_hand": 7,
        "reserved": 0,
        "available": 7,
    }
    restock = requests.post(f"{stock_url}/restock", json={"quantity": 3}, headers=admin(system), timeout=TIMEOUT)
    assert restock.status_code == 200 and restock.json()["on_hand"] == 10
    counted = requests.put(stock_url, json={"on_hand": 4}, headers=admin(system), timeout=TIMEOUT)
    assert counted.status_code == 200 and counted.json()["available"] == 4
    assert eventually(lambda: requests.get(product_url, timeout=TIMEOUT).json()["available"], 4) == 4
    listed = requests.get(f"{system.base_url}/api/products", params={"q": made["sku"]}, timeout=TIMEOUT).json()
    assert [p["available"] for p in listed["items"]] == [4]


def test_stock_refusals_over_http(system: System) -> None:
    made = create(system)
    stock_url = f"{system.base_url}/api/admin/inventory/{made['id']}"
    for body, status in (({"quantity": 0}, 422), ({"quantity": 10_001}, 422), ({"quantity": 1.5}, 400)):
        resp = requests.post(f"{stock_url}/restock", json=body, headers=admin(system), timeout=TIMEOUT)
        assert resp.status_code == status, resp.text
    unknown = requests.get(
        f"{system.base_url}/api/admin/inventory/no-such-product", headers=admin(system), timeout=TIMEOUT
    )
    assert unknown.status_code == 404
    assert requests.get(stock_url, timeout=TIMEOUT).status_code == 401
