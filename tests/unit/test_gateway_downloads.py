"""Digital products over a fake bus: the admin's upload of a file, and buyers' signed, expiring, counted downloads
(Range included) that close when the order is no longer paid."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient

from cartwheel import downloads, subjects
from cartwheel.contracts.catalog import SetProductFile
from cartwheel.contracts.inventory import MAX_ON_HAND, SetStock
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.testing import FakeBus
from tests.unit import test_gateway_accounts, test_gateway_web
from tests.unit.test_gateway_cart import PRODUCT, SECRET
from tests.unit.test_gateway_orders import TOKEN, Orders, checkout
from tests.unit.test_gateway_products import sent
from tests.unit.test_gateway_web import Shop

database_url = test_gateway_accounts.database_url
shop, orders = test_gateway_web.shop, test_gateway_web.orders
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TENANT = "shop-1"
DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def bus(shop: Shop, orders: Orders) -> FakeBus:
    fake = test_gateway_web.bus.__wrapped__(shop, orders)

    def set_file(message: SetProductFile) -> dict[str, Any]:
        file = message.file
        product = shop.products[message.product_id].model_copy(update={
            "file_name": file.name, "file_size": file.size, "file_sha256": file.sha256, "file_type": file.content_type})
        shop.products[product.id] = product
        return product.model_dump(mode="json")

    fake.handlers[SetProductFile] = set_file
    return fake


class Client(FlaskClient):
    """Reads each answer whole and closes it, as a server does once it has sent it (a download holds one of a
    worker's few download places until then)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


@pytest.fixture
def make_client(bus: FakeBus, database_url: str) -> Any:
    def make(**settings: Any) -> FlaskClient:
        options = {"admin_token": TOKEN, "secret": SECRET, "tenant": TENANT, "gateway_database_url": database_url,
                   "downloads_per_line": 3, "digital_file_max_bytes": 64 * 1024}
        app = create_app(Settings(**options | settings), bus)
        app.test_client_class = Client
        return app.test_client()

    return make


@pytest.fixture
def client(make_client: Any) -> FlaskClient:
    return make_client()


def upload(client: FlaskClient, product_id: str, data: bytes = DATA, name: str = "../guide v1.pdf") -> Any:
    return client.put(f"/api/admin/products/{product_id}/file", query_string={"filename": name}, data=data,
                      headers=ADMIN | {"Content-Type": "application/pdf"})


def paid_order(orders: Orders, product_id: str, status: str = "paid") -> str:
    order_id = f"ord_{len(orders.orders) + 1:04d}"
    line = {"product_id": product_id, "sku": "GUIDE", "name": "Guide", "quantity": 1, "unit_price_cents": 900,
            "line_total_cents": 900, "digital": True}
    orders.orders[order_id] = {"order_id": order_id, "status": status, "lines": [line], "total_cents": 900,
                               "currency": "EUR", "payment": {}, "created_at": "2026-12-07T08:00:00Z",
                               "updated_at": "2026-12-07T08:00:00Z"}
    return order_id


def link(order_id: str, product_id: str, expires: int | None = None, tenant: str = TENANT) -> str:
    return downloads.path(SECRET, tenant, order_id, product_id, expires or int(time.time()) + 60)


def test_an_uploaded_file_is_stored_by_its_sha256_and_makes_the_product_digital_with_no_stock_limit(
        client: FlaskClient, shop: Shop, bus: FakeBus) -> None:
    guide = shop.add(name="Guide")
    answer = upload(client, guide.id)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["digital"], body["file_name"], body["file_size"]) == (True, "guide v1.pdf", len(DATA))
    assert "file_sha256" not in body and body["available"] == MAX_ON_HAND
    sha = hashlib.sha256(DATA).hexdigest()
    assert bus.objects[(subjects.PRODUCT_FILES_BUCKET, f"{TENANT}/{guide.id}/{sha}")] == DATA
    (recorded,) = sent(bus, SetProductFile)
    assert (recorded.file.sha256, recorded.file.content_type) == (sha, "application/pdf")

    shop.available[guide.id] = 7  # a limit the admin set stays
    replaced = upload(client, guide.id, data=b"second version")
    assert replaced.status_code == 200 and replaced.get_json()["available"] == 7
    assert [m.on_hand for m in sent(bus, SetStock)] == [MAX_ON_HAND]
    assert (subjects.PRODUCT_FILES_BUCKET, f"{TENANT}/{guide.id}/{sha}") not in bus.objects  # the old one goes


def test_an_upload_too_large_or_for_no_product_or_not_by_an_admin_is_refused(client: FlaskClient, shop: Shop,
                                                                            bus: FakeBus) -> None:
    guide = shop.add(name="Guide")
    assert upload(client, guide.id, data=b"x" * (64 * 1024 + 1)).status_code == 413
    assert upload(client, "no-such-product").status_code == 404
    assert client.put(f"/api/admin/products/{guide.id}/file?filename=a", data=b"x").status_code == 401
    assert client.put(f"/api/admin/products/{guide.id}/file", data=b"x", headers=ADMIN).status_code in (400, 422)
    assert sent(bus, SetProductFile) == []


def test_a_paid_orders_link_downloads_the_file_a_limited_number_of_times_and_resumes_with_range(
        client: FlaskClient, shop: Shop, orders: Orders) -> None:
    guide = shop.add(name="Guide")
    upload(client, guide.id)
    order_id = paid_order(orders, guide.id)
    url = link(order_id, guide.id)

    first = client.get(url)
    assert first.status_code == 200 and first.data == DATA
    assert first.headers["Content-Disposition"] == 'attachment; filename="guide v1.pdf"'
    assert first.headers["Content-Type"] == "application/pdf" and first.headers["Accept-Ranges"] == "bytes"
    assert "no-store" in first.headers["Cache-Control"]
    part = client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.data == DATA[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(DATA)}"
    assert client.get(url, headers={"Range": "bytes=5000-"}).data == DATA[5000:]  # resumed: not counted
    assert client.get(url).status_code == 200
    assert client.get(url, headers={"Range": "bytes=0-9"}).status_code == 206  # from the start: counted (3rd)
    used_up = client.get(url)  # 26,730 bytes sent, 30,720 allowed: not another whole file
    assert used_up.status_code == 410 and "(3)" in used_up.get_json()["error"]["message"]
    assert client.get(url, headers={"Range": "bytes=-3990"}).data == DATA[-3990:]  # what is left, in a range
    assert client.get(url, headers={"Range": "bytes=-1"}).status_code == 410  # and no byte more
    assert client.head(url).status_code == 200  # a HEAD sends no bytes: nothing counted, nothing refused


def test_ranges_cannot_take_more_than_the_budget_and_a_bad_signature_is_a_403(client: FlaskClient, shop: Shop,
                                                                              orders: Orders) -> None:
    guide = shop.add(name="Guide")
    upload(client, guide.id)
    url = link(paid_order(orders, guide.id), guide.id)
    for _ in range(3):  # the whole file three times, a tail at a time: never counted as downloads "from the start"
        assert client.get(url, headers={"Range": f"bytes=-{len(DATA)}"}).status_code == 206
    assert client.get(url, headers={"Range": "bytes=-1"}).status_code == 410
    assert client.get(url, headers={"Range": "bytes=1-", "If-Range": '"not-the-etag"'}).status_code == 410
    assert client.get(url.replace("sig=", "sig=%C3%A9")).status_code in (400, 422)  # not hex: no 500
    assert client.get(url.replace("expires=", "expires=99999999999999999999")).status_code in (400, 422)


def test_a_link_is_refused_forged_expired_for_another_shop_or_once_the_order_is_refunded(
        client: FlaskClient, shop: Shop, orders: Orders) -> None:
    guide = shop.add(name="Guide")
    upload(client, guide.id)
    order_id = paid_order(orders, guide.id)
    good = link(order_id, guide.id)
    assert client.get(good).status_code == 200

    expired = client.get(link(order_id, guide.id, expires=int(time.time()) - 1))
    assert expired.status_code == 410 and "expired" in expired.get_json()["error"]["message"]
    assert client.get(good.replace("expires=", "expires=9")).status_code == 403  # its time altered
    assert client.get(link(order_id, guide.id, tenant="shop-2")).status_code == 403  # another shop's
    other = paid_order(orders, guide.id)
    assert client.get(good.replace(order_id, other)).status_code == 403  # another order's

    orders.orders[order_id]["status"] = "refunded"
    refunded = client.get(good)
    assert refunded.status_code == 410 and "refunded" in refunded.get_json()["error"]["message"]
    orders.orders[order_id]["status"] = "disputed"
    assert client.get(good).status_code == 410
    unpaid = paid_order(orders, guide.id, status="awaiting_payment")
    assert client.get(link(unpaid, guide.id)).status_code == 410
    shipped = shop.add(name="Mug")
    assert client.get(link(order_id.replace("1", "2"), shipped.id)).status_code in (404, 410)


def test_the_order_page_and_my_orders_link_a_paid_orders_downloads_only(
        make_client: Any, shop: Shop, orders: Orders) -> None:
    admin = make_client()
    guide = shop.add(name="Guide")
    upload(admin, guide.id)
    buyer = make_client()
    buyer.post("/api/cart/items", json={"product_id": PRODUCT, "quantity": 1})
    order_id = checkout(buyer).get_json()["order_id"]  # this browser's order (its cookie lists it) ...
    orders.orders[order_id]["lines"][0] |= {"product_id": guide.id, "name": "Guide", "digital": True}  # ... of a file
    html = buyer.get(f"/orders/{order_id}").get_data(as_text=True)
    assert 'id="downloads-pending"' in html and 'data-testid="download"' not in html
    assert 'data-testid="download"' not in buyer.get("/orders").get_data(as_text=True)

    orders.orders[order_id]["status"] = "paid"
    html = buyer.get(f"/orders/{order_id}").get_data(as_text=True)
    found = re.search(r'href="([^"]+)" data-testid="download"', html)
    assert found, html
    href = found.group(1).replace("&amp;", "&")
    query = parse_qs(urlsplit(href).query)
    assert int(query["expires"][0]) > time.time() + 7 * 86400 - 60  # CARTWHEEL_DOWNLOAD_LINK_SECONDS' default
    assert make_client().get(href).data == DATA  # the link is all it takes (a mail's, opened anywhere)
    assert "Download Guide" in buyer.get("/orders").get_data(as_text=True)

    orders.orders[order_id]["status"] = "refunded"
    html = buyer.get(f"/orders/{order_id}").get_data(as_text=True)
    assert "downloads of this order are closed (refunded)" in html and 'data-testid="download"' not in html
