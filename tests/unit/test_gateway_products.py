"""Product routes over a fake bus: what is asked of the catalog, what comes from the KV cache, what clients see."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel import subjects
from cartwheel.contracts.catalog import CreateProduct, GetProduct, ListProducts, Product, UpdateProduct
from cartwheel.errors import NotFound
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.testing import FakeBus
from tests.helpers import random_sku, random_tenant

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
API_FIELDS = {
    "id",
    "sku",
    "name",
    "description",
    "price_cents",
    "currency",
    "active",
    "image_url",
    "available",
    "created_at",
    "updated_at",
}


def make_product(**fields: Any) -> Product:
    return Product.model_validate(
        {
            "id": str(uuid.uuid4()),
            "sku": random_sku(),
            "name": "Mug",
            "description": "A mug",
            "price_cents": 1200,
            "currency": "EUR",
            "active": True,
            "version": 3,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-02T00:00:00Z",
            **fields,
        }
    )


class Catalog:
    """Answers like the catalog from a dict of products."""

    def __init__(self) -> None:
        self.products: dict[str, Product] = {}

    def add(self, **fields: Any) -> Product:
        product = make_product(**fields)
        self.products[product.id] = product
        return product

    def get(self, message: GetProduct) -> dict[str, Any]:
        for product in self.products.values():
            if message.id_or_sku in (product.id, product.sku):
                return product.model_dump(mode="json")
        raise NotFound("no such product")

    def list(self, message: ListProducts) -> dict[str, Any]:
        items = [p.model_dump(mode="json") for p in self.products.values() if p.active or message.include_inactive]
        return {"items": items[: message.limit], "next_cursor": "c2" if len(items) > message.limit else None}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def tenant() -> str:
    return random_tenant()


@pytest.fixture
def bus(catalog: Catalog) -> FakeBus:
    return FakeBus({GetProduct: catalog.get, ListProducts: catalog.list})


@pytest.fixture
def client(bus: FakeBus, tenant: str) -> FlaskClient:
    return create_app(Settings(admin_token=TOKEN, secret="s" * 32, tenant=tenant), bus).test_client()


def cache(bus: FakeBus, product: Product) -> None:
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_cache_key(product.id))] = product.model_dump_json().encode()


def test_a_product_has_the_api_shape(client: FlaskClient, catalog: Catalog) -> None:
    product = catalog.add()
    body = client.get(f"/api/products/{product.id}").get_json()
    assert set(body) == API_FIELDS
    assert body["image_url"] is None and body["available"] is None
    assert body["price_cents"] == 1200 and body["sku"] == product.sku


def test_a_cached_product_is_served_without_asking_the_catalog(client: FlaskClient, bus: FakeBus) -> None:
    product = make_product(name="Cached mug")
    cache(bus, product)
    response = client.get(f"/api/products/{product.id}")
    assert response.status_code == 200
    assert response.get_json()["name"] == "Cached mug"
    assert bus.sent == []


def test_a_cache_miss_asks_the_catalog_with_the_tenant(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, tenant: str
) -> None:
    product = catalog.add()
    assert client.get(f"/api/products/{product.id}").status_code == 200
    assert bus.kv_reads == [(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_cache_key(product.id))]
    (message,) = bus.sent
    assert isinstance(message, GetProduct) and message.id_or_sku == product.id and message.tenant == tenant


def test_a_sku_is_read_through_its_index_entry(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = make_product()
    cache(bus, product)
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_sku_key(product.sku))] = product.id.encode()
    assert client.get(f"/api/products/{product.sku}").get_json()["id"] == product.id
    assert bus.sent == []


def test_a_stale_sku_entry_falls_back_to_the_catalog(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    renamed = make_product()  # its sku changed: the index still points the old sku at it
    cache(bus, renamed)
    current = catalog.add()
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_sku_key(current.sku))] = renamed.id.encode()
    assert client.get(f"/api/products/{current.sku}").get_json()["id"] == current.id
    assert len(bus.sent) == 1


def test_a_sku_missing_from_the_cache_asks_the_catalog(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    assert client.get(f"/api/products/{product.sku}").get_json()["id"] == product.id
    assert len(bus.sent) == 1


def test_an_unreadable_cache_entry_falls_back_to_the_catalog(
    client: FlaskClient, bus: FakeBus, catalog: Catalog
) -> None:
    product = catalog.add()
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_cache_key(product.id))] = b"{not json"
    assert client.get(f"/api/products/{product.id}").status_code == 200
    assert len(bus.sent) == 1


def test_an_inactive_product_is_hidden_from_the_public(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    hidden = catalog.add(active=False)
    cached = make_product(active=False)
    cache(bus, cached)
    for product in (hidden, cached):
        assert client.get(f"/api/products/{product.id}").status_code == 404
        assert client.get(f"/api/products/{product.id}", headers=ADMIN).get_json()["active"] is False
    assert client.get(f"/api/products/{hidden.sku}").status_code == 404


def test_a_bad_token_on_a_public_read_is_401(client: FlaskClient, catalog: Catalog) -> None:
    product = catalog.add()
    assert client.get(f"/api/products/{product.id}", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_very_long_identifier_is_404(client: FlaskClient, bus: FakeBus) -> None:
    assert client.get(f"/api/products/{'x' * 201}").status_code == 404
    assert bus.sent == []


def test_the_list_passes_the_query_and_hides_inactive_products(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, tenant: str
) -> None:
    active = catalog.add()
    catalog.add(active=False)
    body = client.get("/api/products?q=mug&limit=5&cursor=abc").get_json()
    assert [item["id"] for item in body["items"]] == [active.id]
    assert set(body["items"][0]) == API_FIELDS
    (message,) = bus.sent
    assert (message.q, message.limit, message.cursor, message.include_inactive) == ("mug", 5, "abc", False)
    assert message.tenant == tenant


def test_empty_query_values_are_not_given(client: FlaskClient, bus: FakeBus) -> None:
    assert client.get("/api/products?q=&limit=&cursor=").status_code == 200
    (message,) = bus.sent
    assert (message.q, message.limit, message.cursor) == (None, 20, None)


def test_the_list_pages(client: FlaskClient, catalog: Catalog) -> None:
    for _ in range(3):
        catalog.add()
    body = client.get("/api/products?limit=2").get_json()
    assert len(body["items"]) == 2 and body["next_cursor"] == "c2"


def test_include_inactive_is_for_admins(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    catalog.add(active=False)
    assert client.get("/api/products?include_inactive=true").status_code == 401
    body = client.get("/api/products?include_inactive=true", headers=ADMIN).get_json()
    assert len(body["items"]) == 1
    assert bus.sent[-1].include_inactive is True


def test_create_returns_201_with_location(client: FlaskClient, bus: FakeBus, tenant: str) -> None:
    created = make_product()

    def create(message: CreateProduct) -> dict[str, Any]:
        return created.model_copy(update=message.draft.model_dump(exclude={"stock"})).model_dump()

    bus.handlers[CreateProduct] = create
    draft = {"sku": random_sku(), "name": "Mug", "price_cents": 1500, "currency": "EUR", "stock": 7}
    response = client.post("/api/admin/products", json=draft, headers=ADMIN)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/api/products/{created.id}"
    assert response.get_json()["price_cents"] == 1500 and "version" not in response.get_json()
    (message,) = bus.sent
    assert message.draft.sku == draft["sku"] and message.draft.stock == 7 and message.tenant == tenant


def test_update_sends_only_the_given_fields(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    bus.handlers[UpdateProduct] = lambda m: product.model_copy(update={"price_cents": 999}).model_dump()
    response = client.patch(f"/api/admin/products/{product.id}", json={"price_cents": 999}, headers=ADMIN)
    assert response.status_code == 200 and response.get_json()["price_cents"] == 999
    (message,) = bus.sent
    assert message.product_id == product.id
    assert message.patch.model_fields_set == {"price_cents"}


def test_update_of_an_unknown_product_is_404(client: FlaskClient, bus: FakeBus) -> None:
    def missing(message: UpdateProduct) -> None:
        raise NotFound("no such product")

    bus.handlers[UpdateProduct] = missing
    response = client.patch(f"/api/admin/products/{uuid.uuid4()}", json={"name": "New"}, headers=ADMIN)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
