"""Admin stock routes over a fake bus: what is asked of the catalog and inventory, what admins see."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel.contracts.catalog import GetProduct
from cartwheel.contracts.inventory import GetStock, Restock, SetStock
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.testing import FakeBus
from tests.unit.test_gateway_products import ADMIN, TOKEN, Catalog, sent


class Inventory:
    """Keeps levels per product id like the inventory service; refuses a count below what is reserved."""

    def __init__(self) -> None:
        self.levels: dict[str, dict[str, int]] = {}

    def level(self, product_id: str) -> dict[str, Any]:
        on_hand, reserved = (self.levels.get(product_id) or {"on_hand": 0, "reserved": 0}).values()
        return {"product_id": product_id, "on_hand": on_hand, "reserved": reserved, "available": on_hand - reserved}

    def get(self, message: GetStock) -> dict[str, Any]:
        return self.level(message.product_id)

    def restock(self, message: Restock) -> dict[str, Any]:
        current = self.level(message.product_id)
        self.levels[message.product_id] = {"on_hand": current["on_hand"] + message.quantity, "reserved": 0}
        return self.level(message.product_id)

    def set_stock(self, message: SetStock) -> dict[str, Any]:
        reserved = self.level(message.product_id)["reserved"]
        if message.on_hand < reserved:
            raise DomainError("below what is reserved", code="below_reserved", reserved=reserved)
        self.levels[message.product_id] = {"on_hand": message.on_hand, "reserved": reserved}
        return self.level(message.product_id)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def inventory() -> Inventory:
    return Inventory()


@pytest.fixture
def bus(catalog: Catalog, inventory: Inventory) -> FakeBus:
    return FakeBus(
        {
            GetProduct: catalog.get,
            GetStock: inventory.get,
            Restock: inventory.restock,
            SetStock: inventory.set_stock,
        }
    )


@pytest.fixture
def client(bus: FakeBus) -> FlaskClient:
    return create_app(Settings(admin_token=TOKEN, secret="s" * 32, tenant="shop-1"), bus).test_client()


def test_admins_read_a_products_stock(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, inventory: Inventory
) -> None:
    product = catalog.add()
    inventory.levels[product.id] = {"on_hand": 10, "reserved": 3}
    response = client.get(f"/api/admin/inventory/{product.id}", headers=ADMIN)
    assert response.status_code == 200
    assert response.get_json() == {"product_id": product.id, "on_hand": 10, "reserved": 3, "available": 7}
    (message,) = sent(bus, GetStock)
    assert message.tenant == "shop-1"


def test_a_sku_reaches_the_stock_of_its_product(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    assert client.get(f"/api/admin/inventory/{product.sku}", headers=ADMIN).get_json()["product_id"] == product.id
    assert sent(bus, GetStock)[0].product_id == product.id


def test_restock_adds_units(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    path = f"/api/admin/inventory/{product.id}/restock"
    client.post(path, json={"quantity": 5}, headers=ADMIN)
    response = client.post(path, json={"quantity": 10_000}, headers=ADMIN)
    assert response.status_code == 200
    assert response.get_json() == {"product_id": product.id, "on_hand": 10_005, "reserved": 0, "available": 10_005}
    assert [m.quantity for m in sent(bus, Restock)] == [5, 10_000]


def test_set_stock_sets_on_hand(client: FlaskClient, catalog: Catalog) -> None:
    product = catalog.add()
    response = client.put(f"/api/admin/inventory/{product.id}", json={"on_hand": 0}, headers=ADMIN)
    assert response.status_code == 200 and response.get_json()["available"] == 0


def test_set_stock_below_what_is_reserved_is_409(client: FlaskClient, catalog: Catalog, inventory: Inventory) -> None:
    product = catalog.add()
    inventory.levels[product.id] = {"on_hand": 10, "reserved": 4}
    response = client.put(f"/api/admin/inventory/{product.id}", json={"on_hand": 3}, headers=ADMIN)
    assert response.status_code == 409
    assert response.get_json()["error"] == {
        "code": "below_reserved",
        "message": "below what is reserved",
        "reserved": 4,
    }


@pytest.mark.parametrize(
    ("method", "suffix", "body", "status"),
    [
        ("post", "/restock", {"quantity": 0}, 422),
        ("post", "/restock", {"quantity": -3}, 422),
        ("post", "/restock", {"quantity": 10_001}, 422),
        ("post", "/restock", {}, 422),
        ("post", "/restock", {"quantity": 2, "note": "x"}, 422),
        ("post", "/restock", {"quantity": 1.5}, 400),
        ("post", "/restock", {"quantity": "3"}, 400),
        ("post", "/restock", {"quantity": True}, 400),
        ("post", "/restock", {"quantity": None}, 400),
        ("put", "", {"on_hand": -1}, 422),
        ("put", "", {"on_hand": 10_000_001}, 422),
        ("put", "", {"on_hand": "10"}, 400),
        ("put", "", {"quantity": 10}, 422),
    ],
)
def test_bad_quantities_are_refused_before_inventory_is_asked(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, method: str, suffix: str, body: dict[str, Any], status: int
) -> None:
    product = catalog.add()
    response = getattr(client, method)(f"/api/admin/inventory/{product.id}{suffix}", json=body, headers=ADMIN)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"]["fields"]
    assert bus.sent == []


def test_stock_of_an_unknown_product_is_404(client: FlaskClient, bus: FakeBus) -> None:
    for response in (
        client.get("/api/admin/inventory/no-such-product", headers=ADMIN),
        client.post("/api/admin/inventory/no-such-product/restock", json={"quantity": 1}, headers=ADMIN),
        client.put("/api/admin/inventory/no-such-product", json={"on_hand": 1}, headers=ADMIN),
        client.get(f"/api/admin/inventory/{'x' * 201}", headers=ADMIN),
    ):
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert sent(bus, GetStock) == sent(bus, Restock) == sent(bus, SetStock) == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_stock_routes_need_the_admin_token(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, headers: dict[str, str]
) -> None:
    product = catalog.add()
    assert client.get(f"/api/admin/inventory/{product.id}", headers=headers).status_code == 401
    restock = client.post(f"/api/admin/inventory/{product.id}/restock", json={"quantity": 1}, headers=headers)
    assert restock.status_code == 401
    assert client.put(f"/api/admin/inventory/{product.id}", json={"on_hand": 1}, headers=headers).status_code == 401
    assert bus.sent == []


def test_inventory_not_answering_is_503_with_retry_after(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    def silent(message: Any) -> None:
        raise ServiceUnavailable("inventory.stock.restock", "no answer within 5 s")

    bus.handlers[Restock] = silent
    product = catalog.add()
    response = client.post(f"/api/admin/inventory/{product.id}/restock", json={"quantity": 1}, headers=ADMIN)
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_an_idempotency_key_makes_a_retried_restock_the_same_command(
    client: FlaskClient, bus: FakeBus, catalog: Catalog
) -> None:
    first, second = catalog.add(), catalog.add()

    def restock(product_id: str, key: str | None) -> None:
        headers = {**ADMIN, **({"Idempotency-Key": key} if key else {})}
        client.post(f"/api/admin/inventory/{product_id}/restock", json={"quantity": 1}, headers=headers)

    restock(first.id, "k1")
    restock(first.id, "k1")
    restock(first.id, "k2")
    restock(second.id, "k1")
    restock(first.id, None)
    restock(first.id, None)
    ids = [m.id for m in sent(bus, Restock)]
    assert ids[0] == ids[1] and len(set(ids)) == 5


def test_an_overlong_idempotency_key_is_400(client: FlaskClient, catalog: Catalog) -> None:
    product = catalog.add()
    headers = {**ADMIN, "Idempotency-Key": "k" * 201}
    response = client.put(f"/api/admin/inventory/{product.id}", json={"on_hand": 1}, headers=headers)
    assert response.status_code == 400


def test_the_stock_routes_are_documented(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    item = paths["/api/admin/inventory/{product_id}"]
    assert set(item) == {"get", "put"}
    assert item["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SetStockBody")
    assert "409" in item["put"]["responses"] and item["get"]["security"] == [{"adminBearer": []}]
    restock = paths["/api/admin/inventory/{product_id}/restock"]["post"]
    assert restock["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RestockBody")
