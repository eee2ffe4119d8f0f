"""Cart routes over a fake bus: the cart the signed cookie names, what the cart service is asked, what shoppers see."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from itsdangerous import URLSafeSerializer
from werkzeug.test import TestResponse

from cartwheel.contracts.base import Message
from cartwheel.contracts.cart import AddToCart, ChangeQuantity, GetCart, RemoveFromCart
from cartwheel.errors import DomainError, Invalid, NotFound, ServiceUnavailable
from cartwheel.settings import Settings
from cartwheel.supervisor import System
from services.gateway.app import create_app
from services.gateway.cookies import CART_COOKIE, CART_COOKIE_MAX_AGE, CART_SALT
from services.gateway.testing import FakeBus
from tests.unit.test_gateway_products import sent

SECRET = "cookie-secret-for-tests-" + "s" * 16
EMPTY = {"id": None, "items": [], "item_count": 0, "total_cents": 0, "currency": None, "status": "active"}
PRODUCT = "0b7e4c1e-2f5d-4a3b-9c8d-1e2f3a4b5c6d"
OTHER = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"


class Carts:
    """Answers like the cart service: carts by id, every product at 1,000 cents EUR; unknown carts are empty."""

    def __init__(self) -> None:
        self.lines: dict[str, dict[str, int]] = {}

    def view(self, cart_id: str) -> dict[str, Any]:
        lines = self.lines.get(cart_id, {})
        items = [
            {
                "product_id": product_id,
                "sku": f"sku-{product_id[:8]}",
                "name": "Mug",
                "quantity": quantity,
                "unit_price_cents": 1000,
                "line_total_cents": 1000 * quantity,
            }
            for product_id, quantity in lines.items()
        ]
        return {
            "id": cart_id,
            "items": items,
            "item_count": sum(lines.values()),
            "total_cents": sum(i["line_total_cents"] for i in items),
            "currency": "EUR" if items else None,
            "status": "active",
            "updated_at": "2026-01-01T00:00:00Z",
        }

    def get(self, message: GetCart) -> dict[str, Any]:
        return self.view(message.cart_id)

    def add(self, message: AddToCart) -> dict[str, Any]:
        lines = self.lines.setdefault(message.cart_id, {})
        lines[message.product_id] = lines.get(message.product_id, 0) + message.quantity
        return self.view(message.cart_id)

    def change(self, message: ChangeQuantity) -> dict[str, Any]:
        lines = self.lines.get(message.cart_id, {})
        if message.product_id not in lines:
            raise NotFound("that product is not in the cart")
        lines[message.product_id] = message.quantity
        if not message.quantity:
            del lines[message.product_id]
        return self.view(message.cart_id)

    def remove(self, message: RemoveFromCart) -> dict[str, Any]:
        if self.lines.get(message.cart_id, {}).pop(message.product_id, None) is None:
            raise NotFound("that product is not in the cart")
        return self.view(message.cart_id)


@pytest.fixture
def carts() -> Carts:
    return Carts()


@pytest.fixture
def bus(carts: Carts) -> FakeBus:
    return FakeBus(
        {GetCart: carts.get, AddToCart: carts.add, ChangeQuantity: carts.change, RemoveFromCart: carts.remove}
    )


def make_client(bus: FakeBus, **settings: Any) -> FlaskClient:
    return create_app(Settings(admin_token="t", secret=SECRET, tenant="shop-1", **settings), bus).test_client()


@pytest.fixture
def client(bus: FakeBus) -> FlaskClient:
    return make_client(bus)


def set_cookie_of(response: TestResponse) -> SimpleCookie:
    headers = response.headers.getlist("Set-Cookie")
    assert len(headers) == 1, headers
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(headers[0])
    return cookie


def signed(cart_id: str, secret: str = SECRET, salt: str = CART_SALT) -> str:
    return URLSafeSerializer(secret, salt=salt).dumps(cart_id)


def add(client: FlaskClient, product_id: str = PRODUCT, quantity: int = 1) -> TestResponse:
    return client.post("/api/cart/items", json={"product_id": product_id, "quantity": quantity})


# -- the cookie ---------------------------------------------------------------------------------


def test_a_new_visitor_sees_an_empty_cart_and_gets_no_cookie(client: FlaskClient, bus: FakeBus) -> None:
    response = client.get("/api/cart")
    assert response.status_code == 200
    assert response.get_json() == {**EMPTY, "updated_at": None, "version": 0}
    assert "Set-Cookie" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    assert bus.sent == []


def test_the_first_add_starts_a_cart_and_sets_its_signed_cookie(client: FlaskClient, bus: FakeBus) -> None:
    response = add(client, quantity=2)
    assert response.status_code == 200, response.get_data(as_text=True)
    (message,) = sent(bus, AddToCart)
    assert (message.product_id, message.quantity, message.tenant) == (PRODUCT, 2, "shop-1")
    assert response.get_json()["id"] == message.cart_id and response.get_json()["item_count"] == 2
    morsel = set_cookie_of(response)[CART_COOKIE]
    assert URLSafeSerializer(SECRET, salt=CART_SALT).loads(morsel.value) == message.cart_id
    assert morsel.value != message.cart_id
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax"
    assert morsel["path"] == "/" and int(morsel["max-age"]) == CART_COOKIE_MAX_AGE
    assert len(message.cart_id) == 32 and message.cart_id.isalnum()


def test_without_cookie_secure_the_cookie_is_not_secure(bus: FakeBus) -> None:
    morsel = set_cookie_of(add(make_client(bus, cookie_secure=False)))[CART_COOKIE]
    assert not morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax"


def test_the_cookie_names_the_same_cart_on_every_later_request(client: FlaskClient, bus: FakeBus) -> None:
    add(client)
    cart_id = sent(bus, AddToCart)[0].cart_id
    add(client, OTHER, 3)
    assert client.get("/api/cart").get_json()["item_count"] == 4
    assert client.patch(f"/api/cart/items/{OTHER}", json={"quantity": 5}).get_json()["item_count"] == 6
    assert client.delete(f"/api/cart/items/{PRODUCT}").get_json()["item_count"] == 5
    cart_ids = {m.cart_id for m in bus.sent}  # type: ignore[attr-defined]
    assert cart_ids == {cart_id}
    assert [type(m) for m in bus.sent] == [AddToCart, AddToCart, GetCart, ChangeQuantity, RemoveFromCart]


def test_two_visitors_get_two_carts(bus: FakeBus) -> None:
    add(make_client(bus))
    add(make_client(bus))
    first, second = sent(bus, AddToCart)
    assert first.cart_id != second.cart_id


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda victim: victim, id="unsigned id"),
        pytest.param(lambda victim: signed(victim)[:-2] + "AA", id="bad signature"),
        pytest.param(lambda victim: signed(victim)[:-1], id="truncated"),
        pytest.param(lambda victim: signed(victim, secret="another-secret"), id="another secret"),
        pytest.param(lambda victim: signed(victim, salt="session"), id="another salt"),
        pytest.param(lambda victim: "x" + signed(victim), id="garbage"),
    ],
)
def test_a_forged_cookie_gets_a_new_empty_cart_never_the_named_one(
    client: FlaskClient, bus: FakeBus, carts: Carts, forged: Any
) -> None:
    victim = "victimcart0123456789abcdef012345"
    carts.lines[victim] = {PRODUCT: 7}
    client.set_cookie(CART_COOKIE, forged(victim))
    assert client.get("/api/cart").get_json() == {**EMPTY, "updated_at": None, "version": 0}
    assert bus.sent == []
    assert client.patch(f"/api/cart/items/{PRODUCT}", json={"quantity": 1}).status_code == 404
    assert client.delete(f"/api/cart/items/{PRODUCT}").status_code == 404
    assert bus.sent == []
    response = add(client)
    (message,) = sent(bus, AddToCart)
    assert message.cart_id != victim and response.get_json()["item_count"] == 1
    assert URLSafeSerializer(SECRET, salt=CART_SALT).loads(set_cookie_of(response)[CART_COOKIE].value) != victim
    assert carts.lines[victim] == {PRODUCT: 7}


def test_a_signed_value_that_is_not_a_cart_id_is_no_cart(client: FlaskClient, bus: FakeBus) -> None:
    for value in (URLSafeSerializer(SECRET, salt=CART_SALT).dumps(["a"]), signed("../x"), signed("a" * 65)):
        client.set_cookie(CART_COOKIE, value)
        assert client.get("/api/cart").get_json()["id"] is None
    assert bus.sent == []


def test_cartwheel_up_serves_the_cookie_without_secure_unless_told(tmp_path: Path) -> None:
    assert Settings(var_dir=tmp_path).cookie_secure is True
    assert System(Settings(var_dir=tmp_path), seed=False).settings.cookie_secure is False
    assert System(Settings(var_dir=tmp_path, cookie_secure=True), seed=False).settings.cookie_secure is True


# -- what is refused before the cart service is asked --------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"product_id": PRODUCT, "quantity": 0}, 422),
        ({"product_id": PRODUCT, "quantity": -1}, 422),
        ({"product_id": PRODUCT, "quantity": 1000}, 422),
        ({"product_id": PRODUCT, "quantity": "3"}, 400),
        ({"product_id": PRODUCT, "quantity": 3.5}, 400),
        ({"product_id": PRODUCT, "quantity": True}, 400),
        ({"product_id": PRODUCT, "quantity": None}, 400),
        ({"product_id": PRODUCT, "quantity": 1, "price_cents": 1}, 422),
        ({"quantity": 1}, 422),
        ({"product_id": "a/b", "quantity": 1}, 422),
        ({"product_id": 7, "quantity": 1}, 400),
    ],
)
def test_bad_adds_are_refused_before_the_cart_service_is_asked(
    client: FlaskClient, bus: FakeBus, body: dict[str, Any], status: int
) -> None:
    response = client.post("/api/cart/items", json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"]["fields"]
    assert "Set-Cookie" not in response.headers
    assert bus.sent == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"quantity": -1}, 422),
        ({"quantity": 1000}, 422),
        ({"quantity": "3"}, 400),
        ({"quantity": 3.5}, 400),
        ({}, 422),
        ({"quantity": 1, "product_id": PRODUCT}, 422),
    ],
)
def test_bad_quantity_changes_are_refused_before_the_cart_service_is_asked(
    client: FlaskClient, bus: FakeBus, body: dict[str, Any], status: int
) -> None:
    add(client)
    bus.sent.clear()
    response = client.patch(f"/api/cart/items/{PRODUCT}", json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"]["fields"]
    assert bus.sent == []


def test_a_body_that_is_not_json_is_refused(client: FlaskClient, bus: FakeBus) -> None:
    assert client.post("/api/cart/items", data="{", content_type="application/json").status_code == 400
    assert client.post("/api/cart/items", data="quantity=1").status_code == 415
    assert bus.sent == []


def test_changing_a_cart_without_a_cookie_is_404(client: FlaskClient, bus: FakeBus) -> None:
    for response in (
        client.patch(f"/api/cart/items/{PRODUCT}", json={"quantity": 1}),
        client.delete(f"/api/cart/items/{PRODUCT}"),
    ):
        assert response.status_code == 404
        assert response.get_json()["error"] == {"code": "not_found", "message": "no cart"}
        assert "Set-Cookie" not in response.headers
    assert bus.sent == []


@pytest.mark.parametrize("product_id", ["a.b", "x" * 65, "%C3%A9"])
def test_a_line_that_cannot_be_a_product_is_404(client: FlaskClient, bus: FakeBus, product_id: str) -> None:
    add(client)
    bus.sent.clear()
    assert client.patch(f"/api/cart/items/{product_id}", json={"quantity": 1}).status_code == 404
    assert client.delete(f"/api/cart/items/{product_id}").status_code == 404
    assert bus.sent == []


# -- what the cart service answers ---------------------------------------------------------------


def test_quantity_zero_removes_the_line(client: FlaskClient, bus: FakeBus) -> None:
    add(client)
    response = client.patch(f"/api/cart/items/{PRODUCT}", json={"quantity": 0})
    assert response.status_code == 200 and response.get_json()["items"] == []
    assert sent(bus, ChangeQuantity)[0].quantity == 0


def refuse(error: Exception) -> Any:
    def handler(message: Message) -> None:
        raise error

    return handler


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        (NotFound("no such product"), 404, {"code": "not_found", "message": "no such product"}),
        (
            DomainError("only 2 left", code="out_of_stock", available=2),
            409,
            {"code": "out_of_stock", "message": "only 2 left", "available": 2},
        ),
        (
            DomainError("the cart is in EUR", code="currency_mismatch", currency="EUR"),
            409,
            {"code": "currency_mismatch", "message": "the cart is in EUR", "currency": "EUR"},
        ),
        (DomainError("checked out", code="cart_closed"), 409, {"code": "cart_closed", "message": "checked out"}),
        (
            Invalid("a cart holds at most 100 lines"),
            422,
            {"code": "validation_failed", "message": "a cart holds at most 100 lines"},
        ),
    ],
)
def test_refusals_of_the_cart_service_reach_the_shopper(
    client: FlaskClient, bus: FakeBus, error: Exception, status: int, expected: dict[str, Any]
) -> None:
    bus.handlers[AddToCart] = refuse(error)
    response = add(client)
    assert response.status_code == status
    assert response.get_json() == {"error": expected}
    assert "Set-Cookie" not in response.headers  # nothing was created

    bus.handlers[AddToCart] = Carts().add
    add(client)
    bus.handlers[ChangeQuantity] = bus.handlers[RemoveFromCart] = refuse(error)
    for response in (
        client.patch(f"/api/cart/items/{PRODUCT}", json={"quantity": 3}),
        client.delete(f"/api/cart/items/{PRODUCT}"),
    ):
        assert (response.status_code, response.get_json()) == (status, {"error": expected})


def test_a_line_not_in_the_cart_is_404(client: FlaskClient) -> None:
    add(client)
    response = client.delete(f"/api/cart/items/{OTHER}")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_a_silent_cart_service_is_503_with_retry_after(client: FlaskClient, bus: FakeBus) -> None:
    add(client)
    bus.handlers[GetCart] = refuse(ServiceUnavailable("cart.get", "no answer within 5 s"))
    response = client.get("/api/cart")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["error"]["code"] == "service_unavailable"


def test_the_cart_routes_are_documented(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    assert set(paths["/api/cart"]) == {"get"}
    assert set(paths["/api/cart/items"]) == {"post"}
    assert set(paths["/api/cart/items/{product_id}"]) == {"patch", "delete"}
    post = paths["/api/cart/items"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AddItemBody")
    assert {"200", "400", "404", "409", "422", "503"} <= set(post["responses"])
    patch = paths["/api/cart/items/{product_id}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/QuantityBody")
    ok = paths["/api/cart"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    cart = schemas[ok.rsplit("/", 1)[-1]]
    assert {"type": "null"} in cart["properties"]["id"]["anyOf"]
    assert set(cart["required"]) >= {"id", "items", "item_count", "total_cents", "currency", "status"}
