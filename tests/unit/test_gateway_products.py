"""Product routes over a fake bus: what is asked of the catalog, what comes from the KV cache, what clients see."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel import subjects
from cartwheel.contracts.base import Message
from cartwheel.contracts.catalog import CreateProduct, GetProduct, ListProducts, Product, UpdateProduct
from cartwheel.contracts.inventory import GetStock, GetStocks
from cartwheel.errors import DomainError, NotFound, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway import cursors
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
    "categories",
    "image_url",
    "available",
    "digital",
    "file_name",
    "file_size",
    "created_at",
    "updated_at",
}  # not the file's sha256 or type: the object's name stays the shop's


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
def tenant() -> str:
    return random_tenant()


class Inventory:
    """Answers like inventory: ``available`` per product id, zeros for products it never heard of."""

    def __init__(self) -> None:
        self.available: dict[str, int] = {}

    def level(self, product_id: str) -> dict[str, Any]:
        available = self.available.get(product_id, 0)
        return {"product_id": product_id, "on_hand": available, "reserved": 0, "available": available}

    def get(self, message: GetStock) -> dict[str, Any]:
        return self.level(message.product_id)

    def get_many(self, message: GetStocks) -> dict[str, Any]:
        return {"items": [self.level(p) for p in message.product_ids]}


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


def sent(bus: FakeBus, kind: type[Message]) -> list[Any]:
    return [message for message in bus.sent if isinstance(message, kind)]


@pytest.fixture
def client(bus: FakeBus, tenant: str) -> FlaskClient:
    return create_app(Settings(admin_token=TOKEN, secret="s" * 32, tenant=tenant), bus).test_client()


def cache(bus: FakeBus, product: Product, tenant: str) -> None:
    key = subjects.catalog_cache_key(tenant, product.id)
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, key)] = product.model_dump_json().encode()


def test_a_product_has_the_api_shape(client: FlaskClient, catalog: Catalog, inventory: Inventory) -> None:
    product = catalog.add()
    inventory.available[product.id] = 4
    body = client.get(f"/api/products/{product.id}").get_json()
    assert set(body) == API_FIELDS
    assert body["image_url"] is None and body["available"] == 4
    assert body["price_cents"] == 1200 and body["sku"] == product.sku


def test_a_cached_product_is_served_without_asking_the_catalog(client: FlaskClient, bus: FakeBus, tenant: str) -> None:
    product = make_product(name="Cached mug")
    cache(bus, product, tenant)
    response = client.get(f"/api/products/{product.id}")
    assert response.status_code == 200
    assert response.get_json()["name"] == "Cached mug"
    assert sent(bus, GetProduct) == []


def test_a_cache_miss_asks_the_catalog_with_the_tenant(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, tenant: str
) -> None:
    product = catalog.add()
    assert client.get(f"/api/products/{product.id}").status_code == 200
    catalog_reads = [read for read in bus.kv_reads if read[0] == subjects.CATALOG_CACHE_BUCKET]
    assert catalog_reads == [(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_cache_key(tenant, product.id))]
    (message,) = sent(bus, GetProduct)
    assert isinstance(message, GetProduct) and message.id_or_sku == product.id and message.tenant == tenant


def test_a_sku_is_read_through_its_index_entry(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, tenant: str
) -> None:
    product = make_product()
    cache(bus, product, tenant)
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_sku_key(tenant, product.sku))] = product.id.encode()
    assert client.get(f"/api/products/{product.sku}").get_json()["id"] == product.id
    assert sent(bus, GetProduct) == []


def test_a_stale_sku_entry_falls_back_to_the_catalog(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, tenant: str
) -> None:
    renamed = make_product()  # its sku changed: the index still points the old sku at it
    cache(bus, renamed, tenant)
    current = catalog.add()
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_sku_key(tenant, current.sku))] = renamed.id.encode()
    assert client.get(f"/api/products/{current.sku}").get_json()["id"] == current.id
    assert len(sent(bus, GetProduct)) == 1


def test_a_sku_missing_from_the_cache_asks_the_catalog(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    assert client.get(f"/api/products/{product.sku}").get_json()["id"] == product.id
    assert len(sent(bus, GetProduct)) == 1


def test_an_unreadable_cache_entry_falls_back_to_the_catalog(
    client: FlaskClient, bus: FakeBus, catalog: Catalog
, tenant: str) -> None:
    product = catalog.add()
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_cache_key(tenant, product.id))] = b"{not json"
    assert client.get(f"/api/products/{product.id}").status_code == 200
    assert len(sent(bus, GetProduct)) == 1


def test_an_inactive_product_is_hidden_from_the_public(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, tenant: str
) -> None:
    hidden = catalog.add(active=False)
    cached = make_product(active=False)
    cache(bus, cached, tenant)
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
    with client.application.app_context():
        cursor = cursors.signed("abc")  # as a previous page gave it
    query = {"q": "mug", "limit": 5, "cursor": cursor, "category": "mugs", "sort": "price_desc"}
    body = client.get("/api/products", query_string=query).get_json()
    assert [item["id"] for item in body["items"]] == [active.id]
    assert set(body["items"][0]) == API_FIELDS
    (message,) = sent(bus, ListProducts)
    assert (message.q, message.limit, message.cursor, message.include_inactive) == ("mug", 5, "abc", False)
    assert (message.category, message.sort, message.tenant) == ("mugs", "price_desc", tenant)


@pytest.mark.parametrize("query", ["sort=cheapest", "category=Mugs", "category=a%20b"])
def test_the_list_refuses_unknown_sorts_and_bad_categories(client: FlaskClient, bus: FakeBus, query: str) -> None:
    resp = client.get(f"/api/products?{query}")
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "validation_failed"
    assert sent(bus, ListProducts) == []


def test_empty_query_values_are_not_given(client: FlaskClient, bus: FakeBus) -> None:
    assert client.get("/api/products?q=&limit=&cursor=").status_code == 200
    (message,) = sent(bus, ListProducts)
    assert (message.q, message.limit, message.cursor) == (None, 20, None)


def test_the_list_pages(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    for _ in range(3):
        catalog.add()
    body = client.get("/api/products?limit=2").get_json()
    assert len(body["items"]) == 2 and body["next_cursor"].startswith("c2.")  # the catalog's, signed
    assert client.get("/api/products", query_string={"cursor": body["next_cursor"]}).status_code == 200
    assert sent(bus, ListProducts)[-1].cursor == "c2"


def test_include_inactive_is_for_admins(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    catalog.add(active=False)
    assert client.get("/api/products?include_inactive=true").status_code == 401
    body = client.get("/api/products?include_inactive=true", headers=ADMIN).get_json()
    assert len(body["items"]) == 1
    assert sent(bus, ListProducts)[-1].include_inactive is True


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


# -- availability from inventory --------------------------------------------------------------


def test_a_product_read_asks_inventory_once_with_the_product_id(
    client: FlaskClient, bus: FakeBus, inventory: Inventory, tenant: str
) -> None:
    product = make_product()
    cache(bus, product, tenant)
    inventory.available[product.id] = 7
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_sku_key(tenant, product.sku))] = product.id.encode()
    assert client.get(f"/api/products/{product.sku}").get_json()["available"] == 7
    (message,) = sent(bus, GetStock)
    assert message.product_id == product.id and message.tenant == tenant


def test_a_list_page_asks_inventory_once_for_all_its_products(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, inventory: Inventory
) -> None:
    products = [catalog.add() for _ in range(3)]
    catalog.add(active=False)
    inventory.available.update({products[0].id: 5, products[2].id: 1})
    body = client.get("/api/products").get_json()
    assert [item["available"] for item in body["items"]] == [5, 0, 1]
    (message,) = sent(bus, GetStocks)
    assert message.product_ids == [p.id for p in products]
    assert sent(bus, GetStock) == []


def test_an_empty_page_asks_inventory_nothing(client: FlaskClient, bus: FakeBus) -> None:
    assert client.get("/api/products").get_json()["items"] == []
    assert sent(bus, GetStocks) == []


def test_a_hidden_product_asks_inventory_nothing(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add(active=False)
    assert client.get(f"/api/products/{product.id}").status_code == 404
    assert sent(bus, GetStock) == []


@pytest.mark.parametrize(
    "failure", [ServiceUnavailable("inventory.stock.get", "no answer"), DomainError("boom", code="internal_error")]
)
def test_products_are_served_with_unknown_availability_when_inventory_fails(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, failure: Exception
) -> None:
    def fail(message: Message) -> None:
        raise failure

    bus.handlers[GetStock] = bus.handlers[GetStocks] = fail
    product = catalog.add()
    response = client.get(f"/api/products/{product.id}")
    assert response.status_code == 200 and response.get_json()["available"] is None
    page = client.get("/api/products")
    assert page.status_code == 200 and [item["available"] for item in page.get_json()["items"]] == [None]


def test_products_are_served_while_inventory_is_not_running(
    client: FlaskClient, bus: FakeBus, catalog: Catalog
) -> None:
    del bus.handlers[GetStock], bus.handlers[GetStocks]
    product = catalog.add()
    assert client.get(f"/api/products/{product.id}").get_json()["available"] is None
    assert client.get("/api/products").get_json()["items"][0]["available"] is None


def test_availability_waits_less_than_a_whole_request(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    timeouts: list[float | None] = []
    request = bus.request

    def timed(message: Message, timeout: float | None = None) -> Any:
        if isinstance(message, GetStock):
            timeouts.append(timeout)
        return request(message, timeout)

    bus.request = timed  # type: ignore[method-assign]
    client.get(f"/api/products/{catalog.add().id}")
    assert timeouts and all(t is not None and t <= 1.0 for t in timeouts)
