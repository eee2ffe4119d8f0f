"""Product reads take ``available`` from inventory's stock bucket, and ask inventory only for what it lacks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel import subjects
from cartwheel.contracts.catalog import GetProduct, ListProducts
from cartwheel.contracts.inventory import GetStock, GetStocks
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.testing import FakeBus
from tests.unit.test_gateway_products import TOKEN, Catalog, Inventory, cache, make_product, sent


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def inventory() -> Inventory:
    return Inventory()


@pytest.fixture
def bus(catalog: Catalog, inventory: Inventory) -> FakeBus:
    return FakeBus(
        {GetProduct: catalog.get, ListProducts: catalog.list, GetStock: inventory.get, GetStocks: inventory.get_many}
    )


@pytest.fixture
def client(bus: FakeBus) -> FlaskClient:
    return create_app(Settings(admin_token=TOKEN, secret="s" * 32), bus).test_client()


def stock_entry(bus: FakeBus, product_id: str, available: int, **extra: Any) -> None:
    value = {"product_id": product_id, "on_hand": available, "reserved": 0, "available": available, "version": 3}
    key = (subjects.INVENTORY_STOCK_BUCKET, subjects.inventory_stock_key("default", product_id))
    bus.kv[key] = json.dumps({**value, **extra}).encode()


def test_a_product_read_takes_available_from_the_stock_bucket(client: FlaskClient, bus: FakeBus) -> None:
    product = make_product()
    cache(bus, product, "default")
    stock_entry(bus, product.id, 9)
    assert client.get(f"/api/products/{product.id}").get_json()["available"] == 9
    assert sent(bus, GetStock) == []


def test_a_product_the_bucket_lacks_is_asked_of_inventory(
    client: FlaskClient, bus: FakeBus, inventory: Inventory
) -> None:
    product = make_product()
    cache(bus, product, "default")
    inventory.available[product.id] = 4
    assert client.get(f"/api/products/{product.id}").get_json()["available"] == 4
    (message,) = sent(bus, GetStock)
    assert message.product_id == product.id


def test_an_unreadable_entry_is_ignored(client: FlaskClient, bus: FakeBus, inventory: Inventory) -> None:
    product = make_product()
    cache(bus, product, "default")
    bus.kv[(subjects.INVENTORY_STOCK_BUCKET, subjects.inventory_stock_key("default", product.id))] = b"not json"
    inventory.available[product.id] = 2
    assert client.get(f"/api/products/{product.id}").get_json()["available"] == 2


def test_a_list_page_asks_inventory_only_for_products_the_bucket_lacks(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, inventory: Inventory
) -> None:
    products = [catalog.add() for _ in range(3)]
    stock_entry(bus, products[0].id, 5)
    stock_entry(bus, products[2].id, 1)
    inventory.available[products[1].id] = 7
    body = client.get("/api/products").get_json()
    assert [item["available"] for item in body["items"]] == [5, 7, 1]
    (message,) = sent(bus, GetStocks)
    assert message.product_ids == [products[1].id]


def test_a_list_page_all_in_the_bucket_asks_inventory_nothing(
    client: FlaskClient, bus: FakeBus, catalog: Catalog
) -> None:
    products = [catalog.add() for _ in range(2)]
    for p in products:
        stock_entry(bus, p.id, 8)
    assert [i["available"] for i in client.get("/api/products").get_json()["items"]] == [8, 8]
    assert sent(bus, GetStocks) == []


def test_a_list_page_asks_inventory_once_while_the_buckets_copy_is_not_in_sync(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, inventory: Inventory
) -> None:
    products = [catalog.add() for _ in range(3)]
    for p in products:
        stock_entry(bus, p.id, 8)
        inventory.available[p.id] = 6
    bus.kv_local = False  # each bucket read would be a round trip
    assert [i["available"] for i in client.get("/api/products").get_json()["items"]] == [6, 6, 6]
    assert bus.kv_reads == []
    (message,) = sent(bus, GetStocks)
    assert message.product_ids == [p.id for p in products]
