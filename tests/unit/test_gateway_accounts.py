"""Accounts over a fake bus and a SQLite file: register, sign in (with the cart merge), sign out, the limiter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, update
from werkzeug.test import TestResponse

from cartwheel.contracts.cart import AddToCart, GetCart, MergeCarts
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.cookies import CART_COOKIE
from services.gateway.models import SessionRow
from services.gateway.ratelimit import wait_seconds
from services.gateway.session import SESSION_COOKIE
from services.gateway.testing import FakeBus
from tests.unit.test_gateway_cart import PRODUCT, SECRET, Carts, add, signed
from tests.unit.test_gateway_products import sent

PASSWORD = "correct horse battery"
MERGED_AWAY = {"product_id": PRODUCT, "sku": "mug", "name": "Mug", "requested": 9, "quantity": 5}


def new_email() -> str:
    return f"Shopper-{uuid.uuid4().hex[:10]}@Example.COM"


class MergingCarts(Carts):
    """The fake cart service, with the login merge: lines of the source move into the target."""

    checked_out: set[str] = set()

    def merge(self, message: MergeCarts) -> dict[str, Any]:
        if message.target_cart_id in self.checked_out:  # as the cart service refuses, before moving anything
            raise DomainError("the user's cart was checked_out", code="cart_closed", cart="target")
        target = self.lines.setdefault(message.target_cart_id, {})
        for product_id, quantity in self.lines.pop(message.source_cart_id, {}).items():
            target[product_id] = target.get(product_id, 0) + quantity
        return {
            "cart": self.view(message.target_cart_id),
            "adjustments": [{**MERGED_AWAY, "reason": "out_of_stock", "available": 5}],
        }


@pytest.fixture
def database_url(gateway_database_url: str) -> str:
    return gateway_database_url


@pytest.fixture
def carts() -> MergingCarts:
    return MergingCarts()


@pytest.fixture
def bus(carts: MergingCarts) -> FakeBus:
    return FakeBus({GetCart: carts.get, AddToCart: carts.add, MergeCarts: carts.merge})


@pytest.fixture
def make_client(bus: FakeBus, database_url: str) -> Any:
    def make(**settings: Any) -> FlaskClient:
        options = {"admin_token": "t", "secret": SECRET, "tenant": "shop-1", "gateway_database_url": database_url}
        return create_app(Settings(**options | settings), bus).test_client()

    return make


@pytest.fixture
def client(make_client: Any) -> FlaskClient:
    return make_client()


def register(client: FlaskClient, email: str, password: str = PASSWORD) -> TestResponse:
    return client.post("/api/auth/register", json={"email": email, "password": password})


def login(client: FlaskClient, email: str, password: str = PASSWORD, **options: Any) -> TestResponse:
    return client.post("/api/auth/login", json={"email": email, "password": password}, **options)


def cookies_set(response: TestResponse) -> dict[str, Any]:
    jar: dict[str, Any] = {}
    for header in response.headers.getlist("Set-Cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        jar.update(cookie)
    return jar


@pytest.fixture
def account(client: FlaskClient) -> str:
    email = new_email()
    assert register(client, email).status_code == 201
    return email.lower()


# -- register -------------------------------------------------------------------------------------------


def test_register_normalises_the_email_and_does_not_sign_in(client: FlaskClient) -> None:
    response = register(client, "  Ada.Lovelace@EXAMPLE.com ")
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["email"] == "ada.lovelace@example.com" and len(body["id"]) == 32
    assert "Set-Cookie" not in response.headers
    assert client.get("/api/auth/me").status_code == 401


def test_an_email_is_registered_once_whatever_its_case(client: FlaskClient, account: str) -> None:
    response = register(client, account.upper(), "another password")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "email_taken"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"email": "not an email", "password": PASSWORD}, 422, "email"),
        ({"email": "a@b", "password": PASSWORD}, 422, "email"),
        ({"email": "ada@example.com", "password": "short"}, 422, "password"),
        ({"email": "ada@example.com", "password": "123456789"}, 422, "password"),
        ({"email": "ada@example.com", "password": "x" * 1025}, 422, "password"),
        ({"email": "ada@example.com"}, 422, "password"),
        ({"email": "ada@example.com", "password": PASSWORD, "admin": True}, 422, "admin"),
        ({"email": "ada@example.com", "password": 1234567890}, 400, "password"),
        ({"email": ["ada@example.com"], "password": PASSWORD}, 400, "email"),
    ],
)
def test_bad_registrations_are_refused_with_field_errors(
    client: FlaskClient, body: dict[str, Any], status: int, field: str
) -> None:
    response = client.post("/api/auth/register", json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == ("validation_failed" if status == 422 else "bad_request")
    assert field in {problem["field"] for problem in error["fields"]}


def test_a_password_of_ten_characters_is_enough(client: FlaskClient) -> None:
    assert register(client, new_email(), "0123456789").status_code == 201


# -- sign in and out ------------------------------------------------------------------------------------


def test_signing_in_sets_a_session_cookie_and_drops_the_cart_cookie(client: FlaskClient, account: str) -> None:
    response = login(client, account.upper())
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["user"]["email"] == account
    assert body["cart"]["id"] is None and body["cart"]["items"] == [] and body["adjustments"] == []
    assert response.headers["Cache-Control"] == "no-store"
    jar = cookies_set(response)
    session = jar[SESSION_COOKIE]
    assert session["httponly"] and session["secure"] and session["samesite"] == "Lax" and session["path"] == "/"
    assert int(session["max-age"]) == 30 * 86400
    assert jar[CART_COOKIE].value == "" and int(jar[CART_COOKIE]["max-age"]) == 0
    me = client.get("/api/auth/me")
    assert me.status_code == 200 and me.get_json() == body["user"]


def test_without_cookie_secure_the_session_cookie_is_not_secure(make_client: Any) -> None:
    client = make_client(cookie_secure=False)
    email = new_email()
    register(client, email)
    session = cookies_set(login(client, email))[SESSION_COOKIE]
    assert not session["secure"] and session["httponly"]


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(client: FlaskClient, account: str) -> None:
    wrong = login(client, account, "wrong password")
    unknown = login(client, new_email())
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.get_json()["error"]["code"] == "invalid_credentials"
    assert "Set-Cookie" not in wrong.headers and "Set-Cookie" not in unknown.headers


def test_signing_out_ends_the_session_on_the_server(make_client: Any, account: str) -> None:
    browser = make_client()
    login(browser, account)
    stolen = browser.get_cookie(SESSION_COOKIE)
    assert stolen is not None
    response = browser.post("/api/auth/logout")
    assert response.status_code == 204 and response.data == b""
    jar = cookies_set(response)
    assert int(jar[SESSION_COOKIE]["max-age"]) == 0 and int(jar[CART_COOKIE]["max-age"]) == 0
    thief = make_client()
    thief.set_cookie(SESSION_COOKIE, stolen.value)
    assert thief.get("/api/auth/me").status_code == 401


def test_signing_in_again_replaces_the_browsers_session(make_client: Any, account: str) -> None:
    browser = make_client()
    login(browser, account)
    before = browser.get_cookie(SESSION_COOKIE)
    assert before is not None
    login(browser, account)
    after = browser.get_cookie(SESSION_COOKIE)
    assert after is not None and after.value != before.value
    old = make_client()
    old.set_cookie(SESSION_COOKIE, before.value)
    assert old.get("/api/auth/me").status_code == 401
    assert browser.get("/api/auth/me").status_code == 200


def test_signing_out_without_a_session_is_fine(client: FlaskClient) -> None:
    assert client.post("/api/auth/logout").status_code == 204
    client.set_cookie(SESSION_COOKIE, "forged")
    assert client.post("/api/auth/logout").status_code == 204


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda value: value[:-2] + ("AA" if not value.endswith("AA") else "BB"), id="bad signature"),
        pytest.param(lambda value: signed(value.split(".")[0]), id="cart salt"),
        pytest.param(lambda value: "garbage", id="garbage"),
    ],
)
def test_a_forged_session_cookie_signs_nobody_in(make_client: Any, account: str, forge: Any) -> None:
    owner = make_client()
    login(owner, account)
    cookie = owner.get_cookie(SESSION_COOKIE)
    assert cookie is not None
    forger = make_client()
    forger.set_cookie(SESSION_COOKIE, forge(cookie.value))
    assert forger.get("/api/auth/me").status_code == 401
    assert forger.get("/api/cart").get_json()["id"] is None


def test_an_expired_session_signs_nobody_in(client: FlaskClient, account: str, database_url: str) -> None:
    login(client, account)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(update(SessionRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    engine.dispose()
    assert client.get("/api/auth/me").status_code == 401


# -- the cart follows the user -------------------------------------------------------------------------


def test_a_signed_in_shoppers_cart_is_theirs_on_every_device(
    make_client: Any, bus: FakeBus, account: str, carts: MergingCarts
) -> None:
    laptop = make_client()
    login(laptop, account)
    response = add(laptop, quantity=2)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers  # the session names the cart
    (message,) = sent(bus, AddToCart)
    assert message.email == account and len(message.cart_id) == 32
    phone = make_client()
    signed_in = login(phone, account).get_json()
    assert signed_in["cart"]["id"] == message.cart_id and signed_in["cart"]["item_count"] == 2
    add(phone, quantity=1)
    assert sent(bus, AddToCart)[1].cart_id == message.cart_id
    assert laptop.get("/api/cart").get_json()["item_count"] == 3


def test_an_anonymous_cart_merges_into_the_users_cart_at_sign_in(
    client: FlaskClient, bus: FakeBus, account: str, carts: MergingCarts
) -> None:
    add(client, quantity=9)
    anonymous = sent(bus, AddToCart)[0].cart_id
    assert anonymous in carts.lines
    response = login(client, account)
    assert response.status_code == 200, response.get_data(as_text=True)
    (merge,) = sent(bus, MergeCarts)
    assert (merge.source_cart_id, merge.email, merge.tenant) == (anonymous, account, "shop-1")
    assert merge.target_cart_id != anonymous and len(merge.target_cart_id) == 32
    body = response.get_json()
    assert body["cart"]["id"] == merge.target_cart_id and body["cart"]["item_count"] == 9
    assert body["adjustments"] == [{**MERGED_AWAY, "reason": "out_of_stock", "available": 5}]
    assert client.get("/api/cart").get_json()["id"] == merge.target_cart_id  # the session, not a cookie
    add(client)
    assert sent(bus, AddToCart)[-1].cart_id == merge.target_cart_id


def test_a_user_whose_cart_was_checked_out_gets_a_new_one_with_the_anonymous_lines(
    make_client: Any, bus: FakeBus, account: str, carts: MergingCarts
) -> None:
    first = make_client()
    add(first)
    login(first, account)
    (merge,) = sent(bus, MergeCarts)
    carts.checked_out = {merge.target_cart_id}  # the user paid for that cart
    browser = make_client()
    add(browser, quantity=4)
    response = login(browser, account)
    assert response.status_code == 200, response.get_data(as_text=True)
    refused, retried = sent(bus, MergeCarts)[1:]
    assert refused.target_cart_id == merge.target_cart_id and retried.target_cart_id != merge.target_cart_id
    assert response.get_json()["cart"]["id"] == retried.target_cart_id
    assert response.get_json()["cart"]["item_count"] == 4  # nothing lost


def test_a_second_merge_goes_into_the_same_user_cart(make_client: Any, bus: FakeBus, account: str) -> None:
    for _ in range(2):
        browser = make_client()
        add(browser)
        login(browser, account)
    first, second = sent(bus, MergeCarts)
    assert first.target_cart_id == second.target_cart_id and first.source_cart_id != second.source_cart_id


def test_a_silent_cart_service_at_sign_in_is_503_and_nothing_changes(
    client: FlaskClient, bus: FakeBus, account: str
) -> None:
    add(client)

    def silent(message: MergeCarts) -> None:
        raise ServiceUnavailable("cart.merge", "no service is listening")

    bus.handlers[MergeCarts] = silent
    response = login(client, account)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "Set-Cookie" not in response.headers  # the anonymous cart cookie stays, to merge on the next try
    assert client.get("/api/auth/me").status_code == 401


def test_a_cart_already_merged_elsewhere_does_not_stop_sign_in(
    client: FlaskClient, bus: FakeBus, account: str
) -> None:
    add(client)

    def closed(message: MergeCarts) -> None:
        raise DomainError("this cart was merged into another", code="cart_closed")

    bus.handlers[MergeCarts] = closed
    response = login(client, account)
    assert response.status_code == 200
    assert response.get_json()["adjustments"] == []
    assert client.get("/api/auth/me").status_code == 200


# -- the limiter -----------------------------------------------------------------------------------------


def test_failures_per_account_from_an_address_are_limited_even_for_the_right_password(
        client: FlaskClient, account: str) -> None:
    for _ in range(5):
        assert login(client, account, "wrong password").status_code == 401
    refused = login(client, account)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_attempts"
    assert 890 <= int(refused.headers["Retry-After"]) <= 900
    assert refused.get_json()["error"]["retry_after"] == int(refused.headers["Retry-After"])
    assert login(client, account.upper(), "wrong password").status_code == 429  # the same account
    other = new_email()
    register(client, other)
    assert login(client, other).status_code == 200  # another account from the same address


def test_a_strangers_wrong_passwords_do_not_lock_the_owner_out(client: FlaskClient, account: str) -> None:
    """Issue 13, finding 3: 5 wrong passwords from anywhere locked the account's owner out for 15 minutes."""
    stranger = {"environ_base": {"REMOTE_ADDR": "203.0.113.66"}}
    for _ in range(5):
        assert login(client, account, "wrong password", **stranger).status_code == 401
    assert login(client, account, "wrong password", **stranger).status_code == 429  # the stranger waits
    assert login(client, account).status_code == 200  # the owner, from their own address, does not


def test_a_success_forgives_the_accounts_failures(client: FlaskClient, account: str) -> None:
    for _ in range(4):
        login(client, account, "wrong password")
    assert login(client, account).status_code == 200
    for _ in range(4):
        assert login(client, account, "wrong password").status_code == 401
    assert login(client, account).status_code == 200


def test_failures_per_address_are_limited_across_accounts(make_client: Any) -> None:
    client = make_client(login_max_failures_per_ip=3)
    for _ in range(3):
        assert login(client, new_email(), "wrong password").status_code == 401
    assert login(client, new_email(), "wrong password").status_code == 429
    elsewhere = {"environ_base": {"REMOTE_ADDR": "198.51.100.7"}}
    assert login(client, new_email(), "wrong password", **elsewhere).status_code == 401


def test_forwarded_for_counts_only_behind_trusted_proxies(make_client: Any) -> None:
    def fail_from(client: FlaskClient, forwarded: str) -> int:
        return login(client, new_email(), "wrong", headers={"X-Forwarded-For": forwarded}).status_code

    direct = make_client(login_max_failures_per_ip=2)
    assert [fail_from(direct, f"203.0.113.{i}") for i in range(3)] == [401, 401, 429]  # the header is ignored
    proxied = make_client(login_max_failures_per_ip=2, trusted_proxies=1)
    assert [fail_from(proxied, f"spoofed, 203.0.113.{i}") for i in range(3)] == [401, 401, 401]
    assert [fail_from(proxied, "192.0.2.1, 203.0.113.9") for _ in range(3)] == [401, 401, 429]


def test_an_ipv6_client_counts_as_its_slash_64(make_client: Any) -> None:
    client = make_client(login_max_failures_per_ip=2)
    for suffix in ("1", "2"):
        login(client, new_email(), "wrong", environ_base={"REMOTE_ADDR": f"2001:db8:1:2::{suffix}"})
    assert login(client, new_email(), "wrong", environ_base={"REMOTE_ADDR": "2001:db8:1:2::3"}).status_code == 429
    assert login(client, new_email(), "wrong", environ_base={"REMOTE_ADDR": "2001:db8:1:3::1"}).status_code == 401


def test_registrations_per_address_are_limited_whether_they_succeed_or_not(make_client: Any) -> None:
    client = make_client(register_max_per_ip=3)
    taken = new_email()
    assert register(client, taken).status_code == 201
    assert register(client, taken).status_code == 409  # a refused registration counts too
    assert register(client, new_email()).status_code == 201
    refused = register(client, new_email())
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_attempts"
    assert 890 <= int(refused.headers["Retry-After"]) <= 900
    elsewhere = {"environ_base": {"REMOTE_ADDR": "198.51.100.7"}}
    body = {"email": new_email(), "password": PASSWORD}
    assert client.post("/api/auth/register", json=body, **elsewhere).status_code == 201
    assert login(client, taken).status_code == 200  # sign-in has limits of its own


def test_the_wait_is_until_the_oldest_counted_failure_leaves_the_window() -> None:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    window = timedelta(minutes=15)
    recent = [at - timedelta(minutes=m) for m in (1, 2, 10)]  # newest first
    assert wait_seconds(recent, 4, window, at) is None
    assert wait_seconds(recent, 3, window, at) == 5 * 60
    assert wait_seconds(recent, 2, window, at) == 13 * 60
    assert wait_seconds([at - window + timedelta(milliseconds=1)], 1, window, at) == 1  # never 0


# -- documentation ---------------------------------------------------------------------------------------


def test_the_auth_routes_are_documented(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    login_op = paths["/api/auth/login"]["post"]
    assert {"200", "400", "401", "422", "429", "503"} <= set(login_op["responses"])
    assert "Retry-After" in login_op["responses"]["429"]["headers"]
    assert login_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SignedIn")
    register_op = paths["/api/auth/register"]["post"]
    assert {"201", "409", "422"} <= set(register_op["responses"])
    assert register_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Registration")
    assert {"200", "401"} <= set(paths["/api/auth/me"]["get"]["responses"])
    assert "204" in paths["/api/auth/logout"]["post"]["responses"]


def test_wrong_admin_tokens_on_the_api_are_limited_like_the_sign_in_page(make_client: Any) -> None:
    """Issue 13, finding 7: the bearer API let anyone try tokens without end (the sign-in page had a limit)."""
    client = make_client(login_max_failures_per_ip=3)

    def orders(token: str, address: str = "203.0.113.5") -> TestResponse:
        return client.get("/api/admin/orders", headers={"Authorization": f"Bearer {token}"},
                          environ_base={"REMOTE_ADDR": address})

    assert [orders("guess").status_code for _ in range(3)] == [401, 401, 401]
    refused = orders("guess")
    assert refused.status_code == 429 and 890 <= int(refused.headers["Retry-After"]) <= 900
    assert orders("t").status_code == 429  # the right token waits too, from that address
    assert orders("t", "198.51.100.7").status_code not in (401, 429)  # another address is not held up
    signin = client.post("/admin/login", data={"token": "t"}, environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert signin.status_code == 429  # one budget of wrong tokens per address, page and API alike
