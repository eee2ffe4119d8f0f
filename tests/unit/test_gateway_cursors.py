"""Page cursors over a fake bus: the gateway signs what a service hands out and lets nothing else through."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from itsdangerous import Signer

from cartwheel.contracts.base import Message
from cartwheel.contracts.cart import ListCarts
from cartwheel.contracts.catalog import ListProducts
from cartwheel.contracts.inventory import GetStocks
from cartwheel.contracts.orders import ListOrders
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.cursors import CURSOR_SALT
from services.gateway.testing import FakeBus

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s" * 32
SERVICE_CURSOR = uuid.uuid4().hex  # what the service puts in next_cursor (an order or cart id, a catalog position)
# The probe's cursor: a catalog position past SQL's integers (OverflowError in SQLite: a 500, the storefront 503).
OVERFLOW = base64.urlsafe_b64encode(json.dumps({"after": 2**63}).encode()).decode().rstrip("=")
LISTS = {"/api/products": ListProducts, "/api/admin/orders": ListOrders, "/api/admin/carts": ListCarts}


def page(message: Message) -> dict[str, Any]:
    return {"items": [], "next_cursor": SERVICE_CURSOR}


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus({ListProducts: page, ListOrders: page, ListCarts: page, GetStocks: lambda m: {"items": []}})


@pytest.fixture
def client(bus: FakeBus) -> FlaskClient:
    return create_app(Settings(admin_token=TOKEN, secret=SECRET), bus).test_client()


def service_cursor(message: Message) -> str | None:
    return message.after if isinstance(message, ListCarts) else message.cursor  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", LISTS)
def test_a_page_hands_out_a_signed_cursor_that_comes_back_as_the_services(
    client: FlaskClient, bus: FakeBus, path: str
) -> None:
    handed_out = client.get(path, headers=ADMIN).get_json()["next_cursor"]
    assert handed_out != SERVICE_CURSOR and handed_out.startswith(SERVICE_CURSOR)
    assert client.get(path, query_string={"cursor": handed_out}, headers=ADMIN).status_code == 200
    last = [m for m in bus.sent if isinstance(m, LISTS[path])][-1]
    assert service_cursor(last) == SERVICE_CURSOR


def forged_cursors() -> list[str]:
    def sign(key: str, cursor: str = SERVICE_CURSOR) -> str:
        return Signer(key, salt=CURSOR_SALT, digest_method=hashlib.sha256).sign(cursor).decode()

    return [
        OVERFLOW,
        SERVICE_CURSOR,  # a service's own cursor, unsigned
        f"{SERVICE_CURSOR}.{'A' * 43}",  # a made-up signature
        sign("another shop's secret, as long as ours"),
        sign(SECRET).replace(SERVICE_CURSOR, uuid.uuid4().hex),  # the cursor edited, the signature kept
    ]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("cursor", forged_cursors())
def test_a_forged_or_edited_cursor_is_422_and_reaches_no_service(
    client: FlaskClient, bus: FakeBus, path: str, cursor: str
) -> None:
    response = client.get(path, query_string={"cursor": cursor}, headers=ADMIN)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed" and [f["field"] for f in error["fields"]] == ["cursor"]
    assert bus.sent == []


def test_the_storefront_shows_the_first_page_for_a_forged_cursor(client: FlaskClient, bus: FakeBus) -> None:
    page = client.get("/", query_string={"q": "mug", "cursor": OVERFLOW})
    assert page.status_code == 200
    assert "That page link no longer works" in page.get_data(as_text=True)
    (asked,) = [m for m in bus.sent if isinstance(m, ListProducts)]
    assert (asked.q, asked.cursor) == ("mug", None)
