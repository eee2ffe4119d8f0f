"""Shopper accounts over HTTP through the real gateway and services: the cart follows the user."""

from __future__ import annotations

import uuid

import pytest
import requests

from cartwheel.supervisor import System
from tests.e2e.test_cart_http import TIMEOUT, product

PASSWORD = "correct horse battery"


def new_email() -> str:
    return f"Shopper-{uuid.uuid4().hex[:12]}@Example.com"  # not .test: email-validator refuses special-use domains


def register(system: System, email: str, password: str = PASSWORD) -> requests.Response:
    body = {"email": email, "password": password}
    return requests.post(f"{system.base_url}/api/auth/register", json=body, timeout=TIMEOUT)


def login(system: System, browser: requests.Session, email: str, password: str = PASSWORD) -> requests.Response:
    body = {"email": email, "password": password}
    return browser.post(f"{system.base_url}/api/auth/login", json=body, timeout=TIMEOUT)


def test_a_signed_in_shoppers_cart_follows_them_to_another_device(system: System) -> None:
    tea = product(system)
    email = new_email()
    registered = register(system, email)
    assert registered.status_code == 201, registered.text
    assert registered.json()["email"] == email.lower()

    laptop = requests.Session()
    signed_in = login(system, laptop, email)
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["cart"]["id"] is None and "session" in laptop.cookies
    added = laptop.post(
        f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 2}, timeout=TIMEOUT
    )
    assert added.status_code == 200, added.text
    assert "cart" not in laptop.cookies  # the session names a signed-in shopper's cart

    phone = requests.Session()
    on_phone = login(system, phone, email.upper()).json()
    assert on_phone["cart"]["id"] == added.json()["id"] and on_phone["cart"]["item_count"] == 2
    phone.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1}, timeout=TIMEOUT)
    assert laptop.get(f"{system.base_url}/api/cart", timeout=TIMEOUT).json()["item_count"] == 3
    assert phone.get(f"{system.base_url}/api/auth/me", timeout=TIMEOUT).json()["email"] == email.lower()


def test_signing_out_revokes_the_session_everywhere_it_was_copied(system: System) -> None:
    email = new_email()
    register(system, email)
    browser = requests.Session()
    login(system, browser, email)
    copied = browser.cookies["session"]
    assert browser.post(f"{system.base_url}/api/auth/logout", timeout=TIMEOUT).status_code == 204
    assert "session" not in browser.cookies
    replayed = requests.get(f"{system.base_url}/api/auth/me", cookies={"session": copied}, timeout=TIMEOUT)
    assert replayed.status_code == 401
    assert replayed.json()["error"]["code"] == "unauthorized"


def test_an_anonymous_cart_merges_into_the_users_cart_at_sign_in(system: System) -> None:
    tea, mug = product(system), product(system, stock=3)
    email = new_email()
    register(system, email)
    phone = requests.Session()
    login(system, phone, email)
    phone.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1}, timeout=TIMEOUT)

    browser = requests.Session()  # shopping before signing in
    for item in ({"product_id": tea["id"], "quantity": 2}, {"product_id": mug["id"], "quantity": 3}):
        assert browser.post(f"{system.base_url}/api/cart/items", json=item, timeout=TIMEOUT).status_code == 200
    assert "cart" in browser.cookies
    signed_in = login(system, browser, email)
    assert signed_in.status_code == 200, signed_in.text
    cart = signed_in.json()["cart"]
    assert {line["product_id"]: line["quantity"] for line in cart["items"]} == {tea["id"]: 3, mug["id"]: 3}
    assert signed_in.json()["adjustments"] == []
    assert "cart" not in browser.cookies  # cleared: the session names the cart now
    assert phone.get(f"{system.base_url}/api/cart", timeout=TIMEOUT).json()["item_count"] == 6


def test_failed_sign_ins_are_limited_with_retry_after(system: System) -> None:
    email = new_email()
    register(system, email)
    failures = [login(system, requests.Session(), email, "not the password").status_code for _ in range(5)]
    assert failures == [401] * 5
    refused = login(system, requests.Session(), email)  # the right password waits too
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_attempts"
    assert 0 < int(refused.headers["Retry-After"]) <= 900


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "no-at-sign", "password": PASSWORD}, "email"),
        ({"email": "ada@localhost", "password": PASSWORD}, "email"),
        ({"email": "ada@example.com", "password": "too short"}, "password"),
    ],
)
def test_bad_registrations_are_422_with_field_errors(system: System, body: dict[str, str], field: str) -> None:
    response = requests.post(f"{system.base_url}/api/auth/register", json=body, timeout=TIMEOUT)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed" and [f["field"] for f in error["fields"]] == [field]


def test_an_email_registers_once(system: System) -> None:
    email = new_email()
    assert register(system, email).status_code == 201
    again = register(system, email.lower(), "another long password")
    assert again.status_code == 409 and again.json()["error"]["code"] == "email_taken"


def test_a_stale_cookie_of_a_merged_cart_starts_a_new_cart(system: System) -> None:
    tea, email = product(system), new_email()
    register(system, email)
    browser = requests.Session()
    browser.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1}, timeout=TIMEOUT)
    stale = browser.cookies["cart"]
    login(system, browser, email)  # merges that cart into the user's and closes it
    added = requests.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 2},
                          cookies={"cart": stale}, timeout=TIMEOUT)
    assert added.status_code == 200, added.text
    assert added.json()["item_count"] == 2 and added.cookies["cart"] != stale
