"""The catalog over HTTP through the real gateway, real NATS and real services, as `cartwheel up` runs them."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cartwheel.natsserver import free_port
from cartwheel.supervisor import System, child_env
from tests.helpers import image, random_sku

TIMEOUT = 10


def admin(system: System) -> dict[str, str]:
    return {"Authorization": f"Bearer {system.admin_token}"}


def create(system: System, **fields: Any) -> dict[str, Any]:
    body = {"sku": random_sku(), "name": "Kettle", "price_cents": 3900, "currency": "EUR", **fields}
    resp = requests.post(f"{system.base_url}/api/admin/products", json=body, headers=admin(system), timeout=TIMEOUT)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_the_demo_catalog_is_listed(system: System) -> None:
    resp = requests.get(f"{system.base_url}/api/products", params={"limit": 100}, timeout=TIMEOUT)
    assert resp.status_code == 200
    skus = {p["sku"] for p in resp.json()["items"]}
    assert {"CW-MUG-01", "CW-LAMP-01"} <= skus and len([s for s in skus if s.startswith("CW-")]) == 12


def test_create_read_list_and_search(system: System) -> None:
    made = create(system, description="whistles when ready")
    assert set(made) >= {"id", "sku", "name", "description", "price_cents", "currency", "active", "image_url",
                         "available"}
    for key in (made["id"], made["sku"]):
        read = requests.get(f"{system.base_url}/api/products/{key}", timeout=TIMEOUT)
        assert read.status_code == 200 and read.json()["id"] == made["id"]
    found = requests.get(f"{system.base_url}/api/products", params={"q": made["sku"]}, timeout=TIMEOUT).json()
    assert [p["id"] for p in found["items"]] == [made["id"]]


def test_duplicate_sku_is_a_conflict(system: System) -> None:
    made = create(system)
    body = {"sku": made["sku"], "name": "Other", "price_cents": 1, "currency": "EUR"}
    resp = requests.post(f"{system.base_url}/api/admin/products", json=body, headers=admin(system), timeout=TIMEOUT)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "duplicate_sku"


def test_next_read_sees_every_update(system: System) -> None:
    made = create(system)
    url = f"{system.base_url}/api/products/{made['id']}"
    requests.get(url, timeout=TIMEOUT)  # cached now
    for price in range(100, 110):
        patch = requests.patch(f"{system.base_url}/api/admin/products/{made['id']}", json={"price_cents": price},
                               headers=admin(system), timeout=TIMEOUT)
        assert patch.status_code == 200, patch.text
        assert requests.get(url, timeout=TIMEOUT).json()["price_cents"] == price


def test_deactivated_products_leave_the_shop(system: System) -> None:
    made = create(system)
    resp = requests.patch(f"{system.base_url}/api/admin/products/{made['id']}", json={"active": False},
                          headers=admin(system), timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.json()["active"] is False
    assert requests.get(f"{system.base_url}/api/products/{made['id']}", timeout=TIMEOUT).status_code == 404
    listed = requests.get(f"{system.base_url}/api/products", params={"q": made["sku"]}, timeout=TIMEOUT).json()
    assert listed["items"] == []


@pytest.fixture
def second_catalog(system: System) -> Iterator[int]:
    """Another catalog replica on the same database, as `--scale catalog=2` would run it; yields its metrics port."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "services.catalog"],
                               env=child_env(system.settings, port, "catalog"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the second catalog replica did not become healthy in 30 s")
    yield port
    process.terminate()
    process.wait(15)


def handled_updates(metrics_port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=TIMEOUT).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cartwheel_requests_total") and "catalog.products.update" in line)


def test_updates_are_seen_with_two_catalog_replicas(system: System, second_catalog: int) -> None:
    made = create(system)
    url = f"{system.base_url}/api/products/{made['id']}"
    for price in range(200, 240):
        patch = requests.patch(f"{system.base_url}/api/admin/products/{made['id']}", json={"price_cents": price},
                               headers=admin(system), timeout=TIMEOUT)
        assert patch.status_code == 200, patch.text
        assert requests.get(url, timeout=TIMEOUT).json()["price_cents"] == price
        by_sku = requests.get(f"{system.base_url}/api/products/{made['sku']}", timeout=TIMEOUT).json()
        assert by_sku["price_cents"] == price
    assert handled_updates(second_catalog) > 0, "the second replica should have taken part of the updates"


BAD_REQUESTS = [
    # (method, path, kwargs, expected status, admin?)
    ("POST", "/api/admin/products", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, True),
    ("POST", "/api/admin/products", {"json": ["a", "list"]}, 400, True),
    ("POST", "/api/admin/products", {"json": {"sku": "A1", "name": "x", "price_cents": "12", "currency": "EUR"}},
     400, True),
    ("POST", "/api/admin/products", {"json": {"sku": "A1", "name": "x", "price_cents": 12.5, "currency": "EUR"}},
     400, True),
    ("POST", "/api/admin/products",
     {"json": {"sku": "A1", "name": "x", "price_cents": 1, "currency": "EUR", "colour": "red"}}, 422, True),
    ("POST", "/api/admin/products", {"json": {"sku": "A1", "name": "x", "price_cents": -5, "currency": "EUR"}},
     422, True),
    ("POST", "/api/admin/products",
     {"json": {"sku": "'; DROP TABLE products;--", "name": "x", "price_cents": 1, "currency": "EUR"}}, 422, True),
    ("POST", "/api/admin/products", {"json": {"sku": "A1", "name": "x", "price_cents": 1, "currency": "ZZZ"}},
     422, True),
    ("POST", "/api/admin/products", {"data": "sku=A1", "headers": {"Content-Type": "text/plain"}}, 415, True),
    ("POST", "/api/admin/products", {"data": b"{" + b" " * (10 * 1024 * 1024) + b"}",
                                     "headers": {"Content-Type": "application/json"}}, 413, True),
    ("POST", "/api/admin/products", {"json": {"sku": "A1", "name": "x", "price_cents": 1, "currency": "EUR"}},
     401, False),
    ("PATCH", "/api/admin/products/00000000-0000-0000-0000-000000000000", {"json": {"name": "x"}}, 404, True),
    ("PATCH", "/api/admin/products/whatever", {"json": {}}, 422, True),
    ("GET", "/api/products/00000000-0000-0000-0000-000000000000", {}, 404, False),
    ("GET", "/api/products/' OR '1'='1", {}, 404, False),
    ("GET", "/api/products?limit=0", {}, 422, False),
    ("GET", "/api/products?limit=abc", {}, 400, False),
    ("GET", "/api/products?cursor=forged", {}, 422, False),
    ("GET", "/api/products?q=' OR 1=1;--", {}, 200, False),
    ("GET", "/api/no/such/route", {}, 404, False),
    ("DELETE", "/api/products", {}, 405, False),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "as_admin"), BAD_REQUESTS,
                         ids=[f"{m} {p[:40]} -> {s}" for m, p, _, s, _ in BAD_REQUESTS])
def test_bad_input_gets_its_4xx_in_the_error_shape(system: System, method: str, path: str, kwargs: dict[str, Any],
                                                   status: int, as_admin: bool) -> None:
    headers = {**kwargs.pop("headers", {}), **(admin(system) if as_admin else {})}
    resp = requests.request(method, system.base_url + path, headers=headers, timeout=TIMEOUT, **kwargs)
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("application/json")
    if status >= 400:
        error = resp.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert "Traceback" not in resp.text


def test_operations_endpoints(system: System) -> None:
    assert requests.get(f"{system.base_url}/healthz", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{system.base_url}/readyz", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{system.base_url}/metrics", timeout=TIMEOUT).status_code == 401  # the admin's
    metrics = requests.get(f"{system.base_url}/metrics", headers=admin(system), timeout=TIMEOUT)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
    spec = requests.get(f"{system.base_url}/openapi.json", timeout=TIMEOUT).json()
    assert {"/api/products", "/api/products/{id_or_sku}", "/api/admin/products"} <= set(spec["paths"])


# -- images, search and browsing --------------------------------------------------------------

PNG = image("PNG")


def test_an_uploaded_image_is_served_with_its_etag(system: System) -> None:
    made = create(system)
    url = f"{system.base_url}/api/admin/products/{made['id']}/image"
    refused = requests.put(url, data=b"GIF89a....", headers=admin(system), timeout=TIMEOUT)
    assert refused.status_code == 415 and refused.json()["error"]["code"] == "unsupported_media_type"
    too_big = requests.put(url, data=PNG + bytes(5 * 1024 * 1024), headers=admin(system), timeout=TIMEOUT)
    assert too_big.status_code == 413
    stored = requests.put(url, data=PNG, headers={**admin(system), "Content-Type": "image/png"}, timeout=TIMEOUT)
    assert stored.status_code == 200, stored.text
    image_url = stored.json()["image_url"]
    read = requests.get(f"{system.base_url}/api/products/{made['id']}", timeout=TIMEOUT).json()
    assert read["image_url"] == image_url
    served = requests.get(system.base_url + image_url, timeout=TIMEOUT)
    assert served.status_code == 200 and served.content == PNG
    assert served.headers["Content-Type"] == "image/png" and served.headers["Cache-Control"].startswith("public")
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    again = requests.get(system.base_url + image_url, headers={"If-None-Match": served.headers["ETag"]},
                         timeout=TIMEOUT)
    assert again.status_code == 304
    missing = requests.get(f"{system.base_url}/api/products/{create(system)['id']}/image", timeout=TIMEOUT)
    assert missing.status_code == 404


def test_html_behind_image_magic_is_refused_and_a_hidden_products_image_is_private(system: System) -> None:
    # Stored and served as image/png, without nosniff, before; an inactive product's image was `public`.
    made = create(system, active=False)
    url = f"{system.base_url}/api/admin/products/{made['id']}/image"
    html = PNG[:8] + b"<html><script>alert(document.cookie)</script></html>"
    refused = requests.put(url, data=html, headers=admin(system), timeout=TIMEOUT)
    assert refused.status_code == 415 and refused.headers["X-Content-Type-Options"] == "nosniff"
    image_url = requests.put(url, data=PNG, headers=admin(system), timeout=TIMEOUT).json()["image_url"]
    assert requests.get(system.base_url + image_url, timeout=TIMEOUT).status_code == 404
    served = requests.get(system.base_url + image_url, headers=admin(system), timeout=TIMEOUT)
    assert served.status_code == 200 and served.headers["Cache-Control"] == "private, no-cache"


def test_a_forged_cursor_is_422_and_the_storefront_shows_the_first_page(system: System) -> None:
    # The probe's cursor: a 500 (OverflowError in SQLite) and a 503 storefront page before.
    forged = base64.urlsafe_b64encode(json.dumps({"after": 2**63}).encode()).decode()
    listed = requests.get(f"{system.base_url}/api/products", params={"cursor": forged}, timeout=TIMEOUT)
    assert listed.status_code == 422, listed.text
    assert [f["field"] for f in listed.json()["error"]["fields"]] == ["cursor"]
    page = requests.get(f"{system.base_url}/", params={"cursor": forged}, timeout=TIMEOUT)
    assert page.status_code == 200 and "That page link no longer works" in page.text


def test_search_filter_sort_and_pages_over_http(system: System) -> None:
    tag = random_sku("tag").split("-")[1]  # a word no other product holds
    names = {"Walnut board": 3000, f"Board oil {tag}": 900, "Cheese knife": 1500}
    made = [create(system, name=name, price_cents=price, description=f"kitchen {tag}", categories=["kitchen", tag])
            for name, price in names.items()]
    assert made[0]["categories"] == ["kitchen", tag]
    params: dict[str, Any] = {"q": tag, "limit": 1}
    found: list[str] = []
    while True:
        page = requests.get(f"{system.base_url}/api/products", params=params, timeout=TIMEOUT).json()
        found += [p["name"] for p in page["items"]]
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    assert found[0] == f"Board oil {tag}" and sorted(found) == sorted(names)  # the name match first
    by_price = requests.get(f"{system.base_url}/api/products", params={"category": tag, "sort": "price_desc"},
                            timeout=TIMEOUT).json()
    assert [p["name"] for p in by_price["items"]] == ["Walnut board", "Cheese knife", f"Board oil {tag}"]
    bad = requests.get(f"{system.base_url}/api/products", params={"sort": "cheapest"}, timeout=TIMEOUT)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"


def test_the_demo_catalog_has_categories(system: System) -> None:
    mugs = requests.get(f"{system.base_url}/api/products", params={"category": "mugs"}, timeout=TIMEOUT).json()
    assert "CW-MUG-01" in {p["sku"] for p in mugs["items"]}
