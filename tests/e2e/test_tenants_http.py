"""Issue 17: two tenants registered (registry + sync) on one running shop, driven over HTTP with explicit Host
headers. Neither ever sees the other's product, image, account, cart, order or cart event, through any route,
cache or stream, and each one's admin token works at its own host only."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from cartwheel.supervisor import System
from cartwheel.tenants import migrate
from cartwheel.tenants.cli import registry_of
from cartwheel.tenants.mirror import sync_now
from tests.e2e.conftest import run_shop
from tests.e2e.test_accounts_http import PASSWORD, new_email
from tests.helpers import image, random_sku, random_tenant

TIMEOUT = 10
OWN_HOSTS = "127.0.0.1,localhost"  # the installation's own tenant; any other host must be registered
PNG = image("PNG")


@dataclass
class Shop:
    """One tenant as its visitors reach it: the shop's address, its Host and its admin token."""

    base_url: str
    host: str
    admin_token: str

    def get(self, path: str, *, admin: bool = False, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, admin=admin, **kwargs)

    def request(self, method: str, path: str, *, admin: bool = False, token: str | None = None,
                browser: requests.Session | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Host": self.host, **kwargs.pop("headers", {})}
        if admin or token:
            headers["Authorization"] = f"Bearer {token or self.admin_token}"
        return (browser or requests).request(method, self.base_url + path, headers=headers, timeout=TIMEOUT, **kwargs)

    def product(self, stock: int = 20) -> dict[str, Any]:
        body = {"sku": random_sku(), "name": f"Tea of {self.host}", "price_cents": 450, "currency": "EUR",
                "stock": stock}
        made = self.request("POST", "/api/admin/products", admin=True, json=body)
        assert made.status_code == 201, made.text
        return made.json()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    yield from run_shop(tmp_path_factory, "tenants shop", default_tenant_hosts=OWN_HOSTS)


@pytest.fixture(scope="module")
def tenants(shop: System) -> tuple[Shop, Shop, Shop]:
    """Tenants A and B registered and migrated as `cartwheel tenants create` does, the running shop told; and the
    installation's own tenant."""
    registry = registry_of(shop.settings)
    try:
        names = [random_tenant(), random_tenant()]
        made = registry.create_many([(name, [f"{name}.shop.test"], {}) for name in names])
        plan = migrate.plan(shop.settings, registry, tenants=names)
        assert not migrate.run(registry, plan.todo, parallel=2).failures
        assert sync_now(shop.settings, registry) is None
    finally:
        registry.close()
    a, b = (Shop(shop.base_url, tenant.hosts[0], token) for tenant, token in made)
    own = Shop(shop.base_url, "127.0.0.1", shop.admin_token)
    deadline = time.monotonic() + 10
    while a.get("/api/products").status_code == 404 and time.monotonic() < deadline:  # each worker's copy
        time.sleep(0.1)
    return a, b, own


def available(shop: Shop, product_id: str, units: int) -> bool:
    """Wait until the tenant's inventory has the product's stock (it makes it from the product_created event)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if shop.get(f"/api/products/{product_id}").json().get("available") == units:
            return True
        time.sleep(0.1)
    return False


def test_an_unknown_host_is_404_and_the_ops_endpoints_answer_at_any_host(tenants: tuple[Shop, Shop, Shop]) -> None:
    a, _, _ = tenants
    nobody = Shop(a.base_url, "nobody.shop.test", "")
    answer = nobody.get("/api/products")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_host"
    page = nobody.get("/")
    assert page.status_code == 404 and page.headers["Content-Type"].startswith("text/html")
    assert nobody.get("/healthz").status_code == 200 and nobody.get("/readyz").status_code == 200


def test_each_tenants_admin_token_works_at_its_own_host_only(tenants: tuple[Shop, Shop, Shop]) -> None:
    a, b, own = tenants
    assert a.get("/api/admin/orders", admin=True).status_code == 200
    for shop, token in ((a, b.admin_token), (a, own.admin_token), (b, a.admin_token), (own, a.admin_token)):
        assert shop.get("/api/admin/orders", token=token).status_code == 401, (shop.host, token[:4])


def test_a_tenant_never_sees_anothers_products_through_the_api_or_the_caches(
    tenants: tuple[Shop, Shop, Shop],
) -> None:
    a, b, own = tenants
    mine, theirs = a.product(), b.product()
    for _ in range(2):  # the second round reads what the first put in the catalog's cache
        assert a.get(f"/api/products/{mine['id']}").status_code == 200
        assert b.get(f"/api/products/{theirs['sku']}").status_code == 200
        for shop, other in ((a, theirs), (b, mine), (own, mine), (own, theirs)):
            for identifier in (other["id"], other["sku"]):
                assert shop.get(f"/api/products/{identifier}").status_code == 404
                assert shop.get(f"/api/products/{identifier}", admin=True).status_code == 404
    listed_a = {p["id"] for p in a.get("/api/products", params={"limit": 100}).json()["items"]}
    assert mine["id"] in listed_a and theirs["id"] not in listed_a
    searched = a.get("/api/products", params={"q": "Tea of", "limit": 100}).json()["items"]
    assert {p["id"] for p in searched} <= listed_a
    change = {"name": "Renamed at B"}
    assert a.request("PATCH", f"/api/admin/products/{theirs['id']}", admin=True, json=change).status_code == 404
    assert a.get(f"/api/admin/inventory/{theirs['id']}", admin=True).status_code == 404


def test_a_tenant_never_serves_anothers_image(tenants: tuple[Shop, Shop, Shop]) -> None:
    a, b, _ = tenants
    mine = a.product()
    url = f"/api/admin/products/{mine['id']}/image"
    stored = a.request("PUT", url, admin=True, data=PNG, headers={"Content-Type": "image/png"})
    assert stored.status_code == 200, stored.text
    assert a.get(f"/api/products/{mine['id']}/image").content == PNG
    assert b.get(f"/api/products/{mine['id']}/image").status_code == 404
    assert b.request("PUT", url, admin=True, data=PNG, headers={"Content-Type": "image/png"}).status_code == 404


def test_an_account_and_its_sessions_belong_to_one_shop(tenants: tuple[Shop, Shop, Shop]) -> None:
    a, b, own = tenants
    account = {"email": new_email(), "password": PASSWORD}
    assert a.request("POST", "/api/auth/register", json=account).status_code == 201
    for other in (b, own):
        assert other.request("POST", "/api/auth/login", json=account).status_code == 401
    browser = requests.Session()
    assert a.request("POST", "/api/auth/login", json=account, browser=browser).status_code == 200
    session = browser.cookies["session"]
    assert a.get("/api/auth/me", cookies={"session": session}).status_code == 200
    for other in (b, own):  # the cookie copied to another shop's host
        assert other.get("/api/auth/me", cookies={"session": session}).status_code == 401
        assert other.get("/api/orders", cookies={"session": session}).status_code == 401
    assert b.request("POST", "/api/auth/register", json=account).status_code == 201  # free there


def test_a_cart_and_its_events_belong_to_one_shop(tenants: tuple[Shop, Shop, Shop]) -> None:
    a, b, _ = tenants
    tea_a, tea_b = a.product(), b.product()
    assert available(a, tea_a["id"], 20) and available(b, tea_b["id"], 20), "stock of a tenant's new product"
    assert b.request("POST", "/api/cart/items", json={"product_id": tea_a["id"], "quantity": 1}).status_code == 404
    cart_b = requests.Session()
    added = b.request("POST", "/api/cart/items", json={"product_id": tea_b["id"], "quantity": 1}, browser=cart_b)
    assert added.status_code == 200, added.text
    events = b.request("GET", "/api/cart/events", stream=True, cookies={"cart": cart_b.cookies["cart"]})
    try:
        lines = events.iter_lines(decode_unicode=True)
        first = _next_cart(lines)
        assert [item["product_id"] for item in first["items"]] == [tea_b["id"]]
        cart_a = requests.Session()
        for quantity in (1, 2):  # A's changes: none may reach B's stream
            a.request("POST", "/api/cart/items", json={"product_id": tea_a["id"], "quantity": quantity},
                      browser=cart_a)
        b.request("POST", "/api/cart/items", json={"product_id": tea_b["id"], "quantity": 1}, browser=cart_b)
        second = _next_cart(lines)
        assert [(i["product_id"], i["quantity"]) for i in second["items"]] == [(tea_b["id"], 2)]
    finally:
        events.close()
    a_cookie = cart_a.cookies["cart"]
    seen_at_b = b.get("/api/cart", cookies={"cart": a_cookie}).json()  # A's cart cookie replayed at B
    assert seen_at_b["items"] == [] and seen_at_b["id"] != a.get("/api/cart", cookies={"cart": a_cookie}).json()["id"]
    assert a.get("/api/cart", cookies={"cart": a_cookie}).json()["item_count"] == 3


def test_an_order_belongs_to_one_shop(tenants: tuple[Shop, Shop, Shop]) -> None:
    a, b, own = tenants
    tea = a.product()
    assert available(a, tea["id"], 20), "stock of a tenant's new product"
    key = uuid.uuid4().hex
    body = {"email": new_email(), "items": [{"product_id": tea["id"], "quantity": 2}]}
    placed = a.request("POST", "/api/checkout", json=body, headers={"Idempotency-Key": key})
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["order_id"]
    assert a.get(f"/api/orders/{order_id}", admin=True).status_code == 200
    for other in (b, own):
        assert other.get(f"/api/orders/{order_id}", admin=True).status_code == 404
        listed = other.get("/api/admin/orders", admin=True, params={"limit": 100}).json()["items"]
        assert order_id not in {order["id"] for order in listed}
        refused = other.request("POST", f"/api/admin/orders/{order_id}/cancel", admin=True)
        assert refused.status_code == 404
    assert available(a, tea["id"], 18), "A's stock reserved by A's order"
    assert b.request("POST", "/api/checkout", json=body, headers={"Idempotency-Key": key}).status_code != 201
    # Cancelled by A's admin, the order's release goes to A's lane database: the stock comes back at once (the
    # saga's release once carried the installation's tenant and was applied there: A's units stayed held).
    cancelled = a.request("POST", f"/api/admin/orders/{order_id}/cancel", admin=True)
    assert cancelled.status_code == 200, cancelled.text
    assert available(a, tea["id"], 20), "A's stock released when A's order was cancelled"


def _next_cart(lines: Iterator[str]) -> dict[str, Any]:
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name == "cart":
            return json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended without a cart")


def test_a_service_freezes_what_its_tenants_databases_opened_out_of_the_collectors_full_runs(
    shop: System, tenants: tuple[Shop, Shop, Shop],
) -> None:
    """cartwheel.heap.HeapSettler: a tenant's engine, pools and relay live as long as it is open; left in the
    collector's reach, 100 busy tenants made the cart's every full collection stop its loop 60-90 ms."""
    a, b, _ = tenants
    for shop_ in (a, b):  # the catalog opens both tenants' databases, if it had not
        shop_.product()
    log = shop.settings.var_dir / "system.log"
    startup = re.compile(r"(\d+) startup objects frozen")
    settled = re.compile(r"(\d+) objects frozen once tenants' databases opened or closed")
    deadline = time.monotonic() + 15
    while True:  # a second after the last opening (cartwheel.heap.SETTLE_QUIET_S)
        frozen: dict[str, list[int]] = {"startup": [], "settled": []}
        for line in log.read_text(encoding="utf-8").splitlines():
            process, _, text = line.partition("|")
            if process.strip() == "catalog":
                for kind, pattern in (("startup", startup), ("settled", settled)):
                    if found := pattern.search(text):
                        frozen[kind].append(int(found.group(1)))
        if frozen["settled"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert frozen["startup"] and frozen["settled"], frozen
    assert max(frozen["settled"]) > frozen["startup"][0]
