"""Checkout and order routes over a fake bus (a fake orders service) and a SQLite gateway database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from http.cookies import Morsel
from typing import Any

import pytest
from flask.testing import FlaskClient
from itsdangerous import URLSafeSerializer
from sqlalchemy import create_engine, select
from werkzeug.test import TestResponse

from cartwheel.contracts.cart import AddToCart, GetCart
from cartwheel.contracts.orders import CancelOrder, Checkout, GetOrder, ListOrders, PayOrder
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway import cursors
from services.gateway.app import create_app
from services.gateway.cookies import CART_SALT, ORDERS_COOKIE, ORDERS_COOKIE_MAX_AGE, ORDERS_KEPT, ORDERS_SALT
from services.gateway.models import UserRow
from services.gateway.testing import FakeBus
from tests.unit import test_gateway_accounts
from tests.unit.test_gateway_accounts import cookies_set, login, new_email, register
from tests.unit.test_gateway_cart import OTHER, PRODUCT, SECRET, Carts, add, refuse
from tests.unit.test_gateway_products import sent

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
AT = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
database_url = test_gateway_accounts.database_url  # a migrated db per test (tests/unit/conftest.py)


class Orders:
    """Answers like the orders service: orders from the cart (1,000 cents a unit) or from the items sent."""

    def __init__(self, carts: Carts) -> None:
        self.carts = carts
        self.orders: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}

    def checkout(self, message: Checkout) -> dict[str, Any]:
        if message.idempotency_key in self.by_key:
            return self.orders[self.by_key[message.idempotency_key]]
        items = message.items or []
        quantities = {i.product_id: i.quantity for i in items} or self.carts.lines.get(message.cart_id or "", {})
        if not quantities:
            raise DomainError("the cart is empty", code="empty_cart")
        order_id = uuid.uuid4().hex
        lines = [
            {
                "product_id": p,
                "sku": "mug",
                "name": "Mug",
                "quantity": q,
                "unit_price_cents": 1000,
                "line_total_cents": 1000 * q,
            }
            for p, q in quantities.items()
        ]
        self.orders[order_id] = {
            "order_id": order_id,
            "status": "awaiting_payment",
            "lines": lines,
            "total_cents": sum(line["line_total_cents"] for line in lines),
            "currency": "EUR",
            "email": message.email,
            "user_id": message.user_id,
            "cart_id": message.cart_id,
            "payment": {"payment_intent_id": f"pi_{order_id}", "client_secret": f"pi_{order_id}_secret_x"},
            "created_at": AT,
            "updated_at": AT,
        }
        if message.idempotency_key:
            self.by_key[message.idempotency_key] = order_id
        return self.orders[order_id]

    def get(self, message: GetOrder) -> dict[str, Any]:
        if message.order_id not in self.orders:  # as the bus raises the orders service's refusal
            raise DomainError(f"no order {message.order_id}", code="not_found", order_id=message.order_id)
        return self.orders[message.order_id]

    def list(self, message: ListOrders) -> dict[str, Any]:
        found = [o for o in self.orders.values() if message.user_id in (None, o["user_id"])]
        return {"items": found[: message.limit], "next_cursor": None}

    def pay(self, message: PayOrder) -> dict[str, Any]:
        order = self.get(GetOrder(order_id=message.order_id))
        if message.payment_method == "pm_card_visa":
            order["status"], order["payment"]["status"] = "paid", "succeeded"
        else:
            order["payment"]["last_error"] = "Your card was declined."
        return order

    def cancel(self, message: CancelOrder) -> dict[str, Any]:
        order = self.get(GetOrder(order_id=message.order_id))
        if order["status"] == "cancelled":
            raise DomainError("this order is cancelled already", code="order_closed", status="cancelled")
        order["status"] = "cancelled"
        return order


@pytest.fixture
def carts() -> Carts:
    return Carts()


@pytest.fixture
def orders(carts: Carts) -> Orders:
    return Orders(carts)


@pytest.fixture
def bus(carts: Carts, orders: Orders) -> FakeBus:
    handlers: dict[Any, Any] = {GetCart: carts.get, AddToCart: carts.add, Checkout: orders.checkout}
    handlers |= {GetOrder: orders.get, ListOrders: orders.list, PayOrder: orders.pay, CancelOrder: orders.cancel}
    return FakeBus(handlers)


@pytest.fixture
def make_client(bus: FakeBus, database_url: str) -> Any:
    def make(**settings: Any) -> FlaskClient:
        options = {"admin_token": TOKEN, "secret": SECRET, "tenant": "shop-1", "gateway_database_url": database_url}
        return create_app(Settings(**options | settings), bus).test_client()

    return make


@pytest.fixture
def client(make_client: Any) -> FlaskClient:
    return make_client()


def signed_in(make_client: Any) -> FlaskClient:
    browser, email = make_client(), new_email()
    register(browser, email)
    assert login(browser, email).status_code == 200
    return browser


def checkout(client: FlaskClient, body: dict[str, Any] | None = None, **headers: str) -> TestResponse:
    return client.post("/api/checkout", json=body or {}, headers=headers)


def buy_now(client: FlaskClient, quantity: int = 1, **headers: str) -> TestResponse:
    return checkout(client, {"items": [{"product_id": OTHER, "quantity": quantity}]}, **headers)


def orders_cookie(response: TestResponse) -> Morsel[str]:
    return cookies_set(response)[ORDERS_COOKIE]


def listed(morsel: Morsel[str]) -> list[str]:
    return URLSafeSerializer(SECRET, salt=ORDERS_SALT).loads(morsel.value)


# -- checkout ------------------------------------------------------------------------------------------


def test_checking_out_the_cart_places_an_order_this_browser_can_see(client: FlaskClient, bus: FakeBus) -> None:
    add(client, quantity=2)
    cart_id = sent(bus, AddToCart)[0].cart_id
    response = checkout(client, {"email": "Ada@Example.com"})
    assert response.status_code == 201, response.get_data(as_text=True)
    (message,) = sent(bus, Checkout)
    assert (message.tenant, message.cart_id, message.items, message.user_id) == ("shop-1", cart_id, None, None)
    assert (message.email, message.accept_price_changes, message.idempotency_key) == ("ada@example.com", False, None)
    body = response.get_json()
    assert body["order_id"] == body["order"]["order_id"] and body["status"] == "awaiting_payment"
    assert (body["total_cents"], body["currency"]) == (2000, "EUR")
    payment = body["payment"]
    assert payment["provider"] == "stripe" and payment["client_secret"] == f"pi_{body['order_id']}_secret_x"
    assert payment["payment_intent_id"] == f"pi_{body['order_id']}"
    assert response.headers["Cache-Control"] == "no-store"
    morsel = orders_cookie(response)
    assert listed(morsel) == [body["order_id"]]
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
    assert int(morsel["max-age"]) == ORDERS_COOKIE_MAX_AGE
    seen = client.get(f"/api/orders/{body['order_id']}")
    assert seen.status_code == 200 and seen.get_json() == body["order"]
    assert seen.headers["Cache-Control"] == "no-store"


def test_buying_items_sends_them_and_leaves_the_cart_alone(client: FlaskClient, bus: FakeBus) -> None:
    add(client)
    response = buy_now(client, 3)
    assert response.status_code == 201, response.get_data(as_text=True)
    (message,) = sent(bus, Checkout)
    assert message.cart_id is None and [(i.product_id, i.quantity) for i in message.items] == [(OTHER, 3)]
    assert response.get_json()["total_cents"] == 3000


def test_buying_items_needs_no_cart(client: FlaskClient, bus: FakeBus) -> None:
    response = checkout(client, {"items": [{"product_id": PRODUCT, "quantity": 1}], "accept_price_changes": True})
    assert response.status_code == 201
    assert sent(bus, Checkout)[-1].accept_price_changes is True


def test_nothing_to_check_out_is_422_without_asking_the_orders_service(client: FlaskClient, bus: FakeBus) -> None:
    response = checkout(client)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "empty_cart"
    assert "Set-Cookie" not in response.headers
    assert checkout(client, {"items": []}).status_code == 422
    bad_email = checkout(client, {"email": "not an email", "items": [{"product_id": PRODUCT, "quantity": 1}]})
    assert bad_email.status_code == 422 and bad_email.get_json()["error"]["fields"][0]["field"] == "email"
    assert checkout(client, {"items": [{"product_id": PRODUCT, "quantity": 0}]}).status_code == 422
    assert checkout(client, {"cart_id": "someone-elses"}).status_code == 422
    assert bus.sent == []


def test_an_empty_cart_is_the_orders_services_422(client: FlaskClient, bus: FakeBus, carts: Carts) -> None:
    add(client)
    carts.lines.clear()
    response = checkout(client)
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "empty_cart"
    assert len(sent(bus, Checkout)) == 1


def test_the_idempotency_key_goes_to_the_orders_service(client: FlaskClient, bus: FakeBus) -> None:
    first = buy_now(client, **{"Idempotency-Key": "order-7f3a~!"})
    again = buy_now(client, **{"Idempotency-Key": "order-7f3a~!"})
    assert first.status_code == again.status_code == 201
    assert first.get_json() == again.get_json()
    assert [m.idempotency_key for m in sent(bus, Checkout)] == ["order-7f3a~!"] * 2
    assert listed(orders_cookie(again)) == [first.get_json()["order_id"]]  # listed once


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "tab\there", "caf\u00e9"])
def test_a_bad_idempotency_key_is_422(client: FlaskClient, bus: FakeBus, key: str) -> None:
    response = buy_now(client, **{"Idempotency-Key": key})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"]["fields"][0]["field"] == "Idempotency-Key"
    assert bus.sent == []


def test_a_key_of_255_characters_is_fine(client: FlaskClient, bus: FakeBus) -> None:
    assert buy_now(client, **{"Idempotency-Key": "k" * 255}).status_code == 201


SHORT = [{"product_id": OTHER, "requested": 3, "available": 1}]
CHANGED = [
    {"product_id": OTHER, "sku": "mug", "name": "Mug", "old_unit_price_cents": 1000, "new_unit_price_cents": 1200}
]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DomainError("only 1 left", code="out_of_stock", lines=SHORT), 409),
        (DomainError("prices changed", code="price_changed", changes=CHANGED), 409),
        (DomainError("Stripe is down", code="payment_provider_unavailable"), 503),
    ],
)
def test_refusals_of_the_orders_service_reach_the_buyer(
    client: FlaskClient, bus: FakeBus, error: DomainError, status: int
) -> None:
    bus.handlers[Checkout] = refuse(error)
    response = buy_now(client, 3)
    assert response.status_code == status
    assert response.get_json() == {"error": error.to_dict()}
    assert "Set-Cookie" not in response.headers


def test_a_silent_orders_service_is_503(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[Checkout] = refuse(ServiceUnavailable("orders.checkout", "no answer within 10 s"))
    response = buy_now(client)
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_the_orders_cookie_keeps_the_newest_orders(client: FlaskClient) -> None:
    placed = [buy_now(client).get_json()["order_id"] for _ in range(ORDERS_KEPT + 1)]
    assert listed(client.get_cookie(ORDERS_COOKIE)) == placed[::-1][:ORDERS_KEPT]  # type: ignore[arg-type]
    assert client.get(f"/api/orders/{placed[-1]}").status_code == 200
    assert client.get(f"/api/orders/{placed[0]}").status_code == 404


# -- who sees an order ---------------------------------------------------------------------------------


def test_a_stranger_gets_the_404_of_an_unknown_order(make_client: Any, bus: FakeBus) -> None:
    order_id = buy_now(make_client()).get_json()["order_id"]
    bus.sent.clear()
    stranger = make_client()
    theirs = stranger.get(f"/api/orders/{order_id}")
    unknown = stranger.get(f"/api/orders/{uuid.uuid4().hex}")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.get_json() == unknown.get_json() == {"error": {"code": "not_found", "message": "no such order"}}
    assert stranger.get("/api/orders/not.an.id").status_code == 404
    assert bus.sent == []  # nobody to show it to: the orders service is not asked


def test_a_signed_in_stranger_gets_the_same_404(make_client: Any, bus: FakeBus) -> None:
    order_id = buy_now(make_client()).get_json()["order_id"]
    stranger = signed_in(make_client)
    theirs, unknown = stranger.get(f"/api/orders/{order_id}"), stranger.get(f"/api/orders/{uuid.uuid4().hex}")
    assert theirs.status_code == unknown.status_code == 404 and theirs.get_json() == unknown.get_json()


def signed_ids(ids: Any, secret: str = SECRET, salt: str = ORDERS_SALT) -> str:
    return URLSafeSerializer(secret, salt=salt).dumps(ids)


def other_signature(value: str) -> str:
    data, _, signature = value.rpartition(".")
    return f"{data}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda ids: signed_ids(ids, secret="another-secret"), id="another secret"),
        pytest.param(lambda ids: signed_ids(ids, salt=CART_SALT), id="cart salt"),
        pytest.param(lambda ids: other_signature(signed_ids(ids)), id="bad signature"),
        pytest.param(lambda ids: signed_ids(ids[0]), id="not a list"),
        pytest.param(lambda ids: signed_ids([*ids, {"x": 1}])[:-1], id="truncated"),
        pytest.param(lambda ids: ",".join(ids), id="unsigned"),
    ],
)
def test_a_forged_orders_cookie_shows_nothing(make_client: Any, bus: FakeBus, forge: Any) -> None:
    order_id = buy_now(make_client()).get_json()["order_id"]
    forger = make_client()
    forger.set_cookie(ORDERS_COOKIE, forge([order_id]))
    assert forger.get(f"/api/orders/{order_id}").status_code == 404
    assert forger.post(f"/api/orders/{order_id}/pay", json={"payment_method": "pm_card_visa"}).status_code == 404
    assert not sent(bus, GetOrder) and not sent(bus, PayOrder)
    placed = buy_now(forger)  # the forged cookie is replaced, not extended
    assert listed(orders_cookie(placed)) == [placed.get_json()["order_id"]]


def test_a_signed_in_buyer_sees_their_order_on_any_device(make_client: Any, bus: FakeBus) -> None:
    laptop, email = make_client(), new_email()
    register(laptop, email)
    login(laptop, email)
    add(laptop)
    response = checkout(laptop)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert ORDERS_COOKIE not in cookies_set(response)  # the session shows them their orders
    (message,) = sent(bus, Checkout)
    assert message.user_id and message.email == email.lower() and message.cart_id == sent(bus, AddToCart)[0].cart_id
    phone = make_client()
    login(phone, email)
    order_id = response.get_json()["order_id"]
    assert phone.get(f"/api/orders/{order_id}").get_json()["user_id"] == message.user_id
    assert phone.post("/api/auth/logout").status_code == 204
    assert phone.get(f"/api/orders/{order_id}").status_code == 404


def test_admins_see_every_order_and_a_wrong_token_is_401(make_client: Any) -> None:
    order_id = buy_now(make_client()).get_json()["order_id"]
    operator = make_client()
    assert operator.get(f"/api/orders/{order_id}", headers=ADMIN).status_code == 200
    assert operator.get(f"/api/orders/{uuid.uuid4().hex}", headers=ADMIN).status_code == 404
    assert operator.get(f"/api/orders/{order_id}", headers={"Authorization": "Bearer wrong"}).status_code == 401


# -- the signed-in shopper's orders --------------------------------------------------------------------


def test_the_order_list_is_the_signed_in_shoppers(make_client: Any, bus: FakeBus) -> None:
    buy_now(make_client())  # someone else's
    shopper = signed_in(make_client)
    mine = buy_now(shopper).get_json()["order_id"]
    response = shopper.get("/api/orders?status=awaiting_payment&limit=5")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert [o["order_id"] for o in response.get_json()["items"]] == [mine]
    (message,) = sent(bus, ListOrders)
    assert (message.user_id, message.status, message.limit, message.cursor) == (
        sent(bus, Checkout)[-1].user_id,
        "awaiting_payment",
        5,
        None,
    )
    assert message.user_id is not None and message.tenant == "shop-1"


def test_a_shopper_cannot_page_after_an_order_id_of_their_choosing(make_client: Any, bus: FakeBus) -> None:
    someone_elses = buy_now(make_client()).get_json()["order_id"]
    shopper = signed_in(make_client)
    response = shopper.get("/api/orders", query_string={"cursor": someone_elses})  # "does this order exist?"
    assert response.status_code == 422
    assert [f["field"] for f in response.get_json()["error"]["fields"]] == ["cursor"]
    assert sent(bus, ListOrders) == []


def test_the_order_list_needs_sign_in_and_a_good_query(make_client: Any, bus: FakeBus) -> None:
    anonymous = make_client()
    buy_now(anonymous)
    response = anonymous.get("/api/orders")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    shopper = signed_in(make_client)
    assert shopper.get("/api/orders?status=lost").status_code == 422
    assert shopper.get("/api/orders?limit=201").status_code == 422
    assert shopper.get("/api/orders?user_id=x").status_code == 400
    assert not sent(bus, ListOrders)


# -- paying ----------------------------------------------------------------------------------------------


def test_the_buyer_pays_and_gets_the_order_back(client: FlaskClient, bus: FakeBus) -> None:
    order_id = buy_now(client).get_json()["order_id"]
    response = client.post(f"/api/orders/{order_id}/pay", json={"payment_method": "pm_card_visa"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "paid" and response.headers["Cache-Control"] == "no-store"
    (message,) = sent(bus, PayOrder)
    assert (message.order_id, message.payment_method, message.tenant) == (order_id, "pm_card_visa", "shop-1")


def test_a_decline_is_not_an_http_error(client: FlaskClient) -> None:
    order_id = buy_now(client).get_json()["order_id"]
    response = client.post(f"/api/orders/{order_id}/pay", json={"payment_method": "pm_card_chargeDeclined"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "awaiting_payment" and body["payment"]["last_error"] == "Your card was declined."


def test_a_signed_in_buyer_pays_from_another_device(make_client: Any, bus: FakeBus) -> None:
    laptop, email = make_client(), new_email()
    register(laptop, email)
    login(laptop, email)
    order_id = buy_now(laptop).get_json()["order_id"]
    phone = make_client()
    login(phone, email)
    assert phone.post(f"/api/orders/{order_id}/pay", json={"payment_method": "pm_card_visa"}).status_code == 200
    assert [type(m) for m in bus.sent[-2:]] == [GetOrder, PayOrder]


def test_only_the_buyer_pays(make_client: Any, bus: FakeBus) -> None:
    buyer = make_client()
    order_id = buy_now(buyer).get_json()["order_id"]
    pay = {"payment_method": "pm_card_visa"}
    assert make_client().post(f"/api/orders/{order_id}/pay", json=pay).status_code == 404
    assert signed_in(make_client).post(f"/api/orders/{order_id}/pay", json=pay).status_code == 404
    assert make_client().post(f"/api/orders/{order_id}/pay", json=pay, headers=ADMIN).status_code == 404
    assert buyer.post(f"/api/orders/{order_id}/pay", json={"payment_method": "pm card"}).status_code == 422
    assert buyer.post(f"/api/orders/{order_id}/pay", json={}).status_code == 422
    assert not sent(bus, PayOrder)


def test_paying_a_closed_order_is_409(client: FlaskClient, bus: FakeBus) -> None:
    order_id = buy_now(client).get_json()["order_id"]
    bus.handlers[PayOrder] = refuse(DomainError("the order expired", code="order_closed", status="expired"))
    response = client.post(f"/api/orders/{order_id}/pay", json={"payment_method": "pm_card_visa"})
    assert response.status_code == 409
    assert response.get_json()["error"] == {"code": "order_closed", "message": "the order expired", "status": "expired"}


# -- admin -----------------------------------------------------------------------------------------------


def test_admins_list_every_order(client: FlaskClient, bus: FakeBus) -> None:
    buy_now(client)
    cursor = uuid.uuid4().hex
    with client.application.app_context():
        handed_out = cursors.signed(cursor)  # as a previous page gave it
    query = {"status": "paid", "limit": 10, "cursor": handed_out}
    response = client.get("/api/admin/orders", query_string=query, headers=ADMIN)
    assert response.status_code == 200 and len(response.get_json()["items"]) == 1
    (message,) = sent(bus, ListOrders)
    assert (message.user_id, message.status, message.limit, message.cursor) == (None, "paid", 10, cursor)


def test_admins_cancel_orders(client: FlaskClient, bus: FakeBus) -> None:
    order_id = buy_now(client).get_json()["order_id"]
    response = client.post(f"/api/admin/orders/{order_id}/cancel", headers=ADMIN)
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    (message,) = sent(bus, CancelOrder)
    assert (message.order_id, message.tenant, message.restock) == (order_id, "shop-1", True)
    shipped = buy_now(client).get_json()["order_id"]
    assert client.post(f"/api/admin/orders/{shipped}/cancel?restock=false", headers=ADMIN).status_code == 200
    assert sent(bus, CancelOrder)[-1].restock is False  # the admin's choice: the units were shipped
    assert client.post(f"/api/admin/orders/{shipped}/cancel?restock=maybe", headers=ADMIN).status_code == 400
    again = client.post(f"/api/admin/orders/{order_id}/cancel", headers=ADMIN)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "order_closed"
    assert client.post(f"/api/admin/orders/{uuid.uuid4().hex}/cancel", headers=ADMIN).status_code == 404
    assert client.post("/api/admin/orders/a.b/cancel", headers=ADMIN).status_code == 404


def test_the_admin_order_routes_need_the_token(client: FlaskClient, bus: FakeBus) -> None:
    order_id = buy_now(client).get_json()["order_id"]
    bus.sent.clear()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert client.get("/api/admin/orders", headers=headers).status_code == 401
        assert client.post(f"/api/admin/orders/{order_id}/cancel", headers=headers).status_code == 401
    assert client.get("/api/admin/orders?status=lost", headers=ADMIN).status_code == 422
    assert bus.sent == []


# -- the cart after checkout -----------------------------------------------------------------------------


def test_a_signed_in_shoppers_next_add_after_checkout_starts_a_new_cart(
    make_client: Any, bus: FakeBus, carts: Carts, database_url: str
) -> None:
    shopper = signed_in(make_client)
    add(shopper)
    old = sent(bus, AddToCart)[0].cart_id
    checkout(shopper)
    closed = carts.add

    def add_unless_checked_out(message: AddToCart) -> dict[str, Any]:
        if message.cart_id == old:
            raise DomainError("this cart is checked out", code="cart_closed")
        return closed(message)

    bus.handlers[AddToCart] = add_unless_checked_out
    response = add(shopper, OTHER)
    assert response.status_code == 200, response.get_data(as_text=True)
    new = response.get_json()["id"]
    assert new != old and [m.cart_id for m in sent(bus, AddToCart)] == [old, old, new]
    assert "Set-Cookie" not in response.headers
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.scalars(select(UserRow.cart_id)).all() == [new]
    engine.dispose()
    add(shopper)
    assert sent(bus, AddToCart)[-1].cart_id == new and shopper.get("/api/cart").get_json()["id"] == new


# -- documentation ---------------------------------------------------------------------------------------


def test_the_order_routes_are_documented(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]

    def schema(operation: dict[str, Any], status: str) -> str:
        return operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    post = paths["/api/checkout"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CheckoutBody")
    assert schema(post, "201") == "Placed" and {"400", "409", "415", "422", "503"} <= set(post["responses"])
    get = paths["/api/orders/{order_id}"]["get"]
    assert schema(get, "200") == "OrderView" and {"404", "503"} <= set(get["responses"])
    mine = paths["/api/orders"]["get"]
    assert schema(mine, "200") == "OrderPage" and "401" in mine["responses"]
    assert {p["name"] for p in mine["parameters"] if p["in"] == "query"} == {"status", "limit", "cursor"}
    pay = paths["/api/orders/{order_id}/pay"]["post"]
    assert pay["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PayBody")
    assert schema(pay, "200") == "OrderView" and {"404", "409", "422", "503"} <= set(pay["responses"])
    admin = paths["/api/admin/orders"]["get"]
    assert admin["security"] == [{"adminBearer": []}] and "401" in admin["responses"]
    cancel = paths["/api/admin/orders/{order_id}/cancel"]["post"]
    assert cancel["security"] == [{"adminBearer": []}] and {"401", "404", "409"} <= set(cancel["responses"])


def test_a_hosted_checkout_returns_to_the_shops_own_address_never_one_the_request_names(
    make_client: Any, bus: FakeBus
) -> None:
    buy = {"items": [{"product_id": PRODUCT, "quantity": 1}], "mode": "hosted"}
    # A shop that answers any host ("*"): what the request names still never becomes the way back.
    unset = make_client(default_tenant_hosts="*").post("/api/checkout", json=buy, headers={"Host": "evil.example"})
    assert unset.status_code == 503 and "CARTWHEEL_PUBLIC_URL" in unset.get_json()["error"]["message"]
    shop = make_client(public_url="https://shop.example.com", default_tenant_hosts="*")
    placed = shop.post("/api/checkout", json=buy, headers={"Host": "evil.example"})
    assert placed.status_code == 201
    (checkout,) = [m for m in sent(bus, Checkout)][-1:]
    assert (checkout.mode, checkout.return_url) == ("hosted", "https://shop.example.com/orders/{ORDER_ID}")
    paid = shop.post(f"/api/orders/{placed.get_json()['order_id']}/pay", json={"payment_method": "pm_card_visa"},
                     headers={"Host": "evil.example"})  # the buyer's browser: its orders cookie is that host's
    assert paid.status_code == 200
    (pay,) = sent(bus, PayOrder)
    assert pay.return_url == f"https://shop.example.com/orders/{placed.get_json()['order_id']}"
