"""The cart event stream over a fake bus and a fake subscription: what a stream sends, when, and that it lets go."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cartwheel import subjects
from cartwheel.contracts.cart import CartUpdated, CartView, GetCart
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway import sse
from services.gateway.app import create_app
from services.gateway.cookies import CART_COOKIE
from services.gateway.testing import FakeBus
from tests.unit.test_gateway_cart import PRODUCT, SECRET, Carts, signed

CART = "cart-a"
OTHER_CART = "cart-b"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HEARTBEAT = 0.05


class FakeSubscriptions:
    """Stands in for the bridge's ``subscribe``: keeps the callback so a test can publish."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.subjects: list[str] = []
        self.unsubscribed = 0
        self.on_message: Callable[[bytes], None] | None = None
        self.fail: ServiceUnavailable | None = None

    def __call__(self, subject: str, on_message: Callable[[bytes], None]) -> Callable[[], None]:
        self.log.append("subscribe")
        if self.fail:
            raise self.fail
        self.subjects.append(subject)
        self.on_message = on_message
        return self.unsubscribe

    def unsubscribe(self) -> None:
        self.unsubscribed += 1


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def carts() -> Carts:
    return Carts()


@pytest.fixture
def subscriptions(log: list[str]) -> FakeSubscriptions:
    return FakeSubscriptions(log)


@pytest.fixture
def feed(subscriptions: FakeSubscriptions) -> sse.CartFeed:
    return sse.CartFeed(subscriptions, heartbeat=HEARTBEAT)


@pytest.fixture
def bus(carts: Carts, log: list[str]) -> FakeBus:
    def get(message: GetCart) -> dict[str, Any]:
        log.append("get")
        return carts.view(message.cart_id)

    return FakeBus({GetCart: get})


@pytest.fixture
def app(bus: FakeBus, feed: sse.CartFeed) -> Flask:
    app = create_app(Settings(admin_token="t", secret=SECRET, tenant="shop-1"), bus)
    app.extensions[sse.FEED] = feed
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Stream:
    """An open stream read event by event (the generator runs in this thread, up to the next chunk)."""

    def __init__(self, response: TestResponse) -> None:
        self.response = response
        self._chunks: Iterator[bytes] = iter(response.response)

    def next(self) -> str:
        return next(self._chunks).decode()

    def next_cart(self) -> dict[str, Any]:
        chunk = self.next()
        assert "event: cart\n" in chunk, chunk
        return json.loads(chunk.split("data: ", 1)[1])

    def rest(self) -> list[str]:
        return [chunk.decode() for chunk in self._chunks]


def open_stream(client: FlaskClient, cart_id: str | None = CART) -> Stream:
    if cart_id is not None:
        client.set_cookie(CART_COOKIE, signed(cart_id))
    response = client.get("/api/cart/events", buffered=False)
    assert response.status_code == 200
    return Stream(response)


def publish(feed: sse.CartFeed, cart_id: str, quantity: int, at: datetime, version: int = 0,
            tenant: str = "shop-1") -> None:
    items = [{"product_id": PRODUCT, "sku": "s", "name": "Mug", "quantity": quantity,
              "unit_price_cents": 1000, "line_total_cents": 1000 * quantity}]
    cart = CartView(id=cart_id, items=items, item_count=quantity, total_cents=1000 * quantity,
                    currency="EUR", status="active", updated_at=at, version=version)
    feed.deliver(CartUpdated(tenant=tenant, cart=cart).model_dump_json().encode())


def test_a_stream_starts_with_the_current_cart_read_after_subscribing(
    client: FlaskClient, carts: Carts, feed: sse.CartFeed, subscriptions: FakeSubscriptions, log: list[str]
) -> None:
    carts.lines[CART] = {PRODUCT: 3}
    stream = open_stream(client)
    headers = stream.response.headers
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-store" and headers["X-Accel-Buffering"] == "no"
    first = stream.next()
    assert first.startswith(f"retry: {sse.RETRY_MS}\n")
    assert json.loads(first.split("data: ", 1)[1])["item_count"] == 3
    assert log == ["subscribe", "get"]  # subscribed first: no change falls between reading and listening
    assert subscriptions.subjects == [subjects.CART_UPDATED] and feed.count(CART) == 1
    stream.response.close()


def test_a_change_reaches_the_stream_and_another_carts_change_does_not(
    client: FlaskClient, feed: sse.CartFeed
) -> None:
    stream = open_stream(client)
    stream.next_cart()
    publish(feed, CART, 2, T0)
    assert stream.next_cart()["item_count"] == 2
    publish(feed, OTHER_CART, 7, T0 + timedelta(seconds=1))
    assert stream.next() == ": heartbeat\n\n"
    stream.response.close()


def test_another_tenants_change_of_a_cart_with_the_same_id_never_reaches_the_stream(
    client: FlaskClient, feed: sse.CartFeed
) -> None:
    stream = open_stream(client)  # at shop-1, the app's tenant
    stream.next_cart()
    publish(feed, CART, 9, T0, version=5, tenant="shop-2")
    assert stream.next() == ": heartbeat\n\n"
    publish(feed, CART, 2, T0, version=6)
    assert stream.next_cart()["item_count"] == 2
    assert feed.count(CART, "shop-1") == 1 and feed.count(CART, "shop-2") == 0
    stream.response.close()


def test_an_older_cart_is_never_sent_after_a_newer_one(client: FlaskClient, feed: sse.CartFeed) -> None:
    stream = open_stream(client)
    stream.next_cart()
    publish(feed, CART, 5, T0 + timedelta(seconds=2))
    assert stream.next_cart()["item_count"] == 5
    publish(feed, CART, 4, T0 + timedelta(seconds=1))  # a relay replica's late copy
    assert stream.next() == ": heartbeat\n\n"
    publish(feed, CART, 5, T0 + timedelta(seconds=2))  # the same cart again
    assert stream.next() == ": heartbeat\n\n"
    publish(feed, CART, 6, T0 + timedelta(seconds=3))
    publish(feed, CART, 7, T0 + timedelta(seconds=4))  # both before the stream looks: only the newest goes out
    assert stream.next_cart()["item_count"] == 7
    publish(feed, CART, 9, T0 + timedelta(seconds=6))
    publish(feed, CART, 8, T0 + timedelta(seconds=5))  # out of order, before the stream looks: the newer stays
    assert stream.next_cart()["item_count"] == 9
    stream.response.close()


def test_the_carts_version_orders_it_not_the_clock_of_the_server_that_changed_it(
    client: FlaskClient, feed: sse.CartFeed
) -> None:
    stream = open_stream(client)
    stream.next_cart()
    publish(feed, CART, 5, T0 + timedelta(seconds=9), version=5)
    assert stream.next_cart()["item_count"] == 5
    publish(feed, CART, 6, T0, version=6)  # a new lane leader whose clock is behind: still the newer cart
    assert stream.next_cart()["item_count"] == 6
    publish(feed, CART, 4, T0 + timedelta(seconds=20), version=4)  # a late copy, however late its clock
    assert stream.next() == ": heartbeat\n\n"
    stream.response.close()


def test_a_closed_stream_releases_its_listener(client: FlaskClient, feed: sse.CartFeed) -> None:
    streams = [open_stream(client) for _ in range(3)]
    for stream in streams:
        stream.next_cart()
    assert feed.count(CART) == 3
    streams[0].response.close()  # what the server does when the client has gone
    assert feed.count(CART) == 2
    for stream in streams[1:]:
        stream.response.close()
    assert feed.count() == 0
    publish(feed, CART, 1, T0)  # nobody left to hear it: no error


def test_one_subscription_serves_every_stream_of_a_worker(
    client: FlaskClient, subscriptions: FakeSubscriptions
) -> None:
    for cart_id in (CART, OTHER_CART, CART):
        open_stream(client, cart_id).next_cart()
    assert subscriptions.subjects == [subjects.CART_UPDATED]


def test_a_stopping_worker_ends_every_stream(
    client: FlaskClient, app: Flask, feed: sse.CartFeed, subscriptions: FakeSubscriptions
) -> None:
    stream = open_stream(client)
    stream.next_cart()
    sse.end_streams(app)
    assert stream.rest() == []
    assert feed.count() == 0 and subscriptions.unsubscribed == 1
    late = client.get("/api/cart/events", buffered=False)
    assert "event: unavailable" in late.get_data(as_text=True)


def test_after_a_reconnect_the_stream_reads_the_cart_again(
    client: FlaskClient, carts: Carts, feed: sse.CartFeed, log: list[str]
) -> None:
    stream = open_stream(client)
    assert stream.next_cart()["item_count"] == 0
    carts.lines[CART] = {PRODUCT: 4}  # changed while NATS was away: the event was lost
    feed.resync_all()
    assert stream.next_cart()["item_count"] == 4
    assert log.count("get") == 2
    stream.response.close()


def test_a_merged_cart_is_sent_and_ends_the_stream(client: FlaskClient, feed: sse.CartFeed) -> None:
    stream = open_stream(client)
    stream.next_cart()
    cart = CartView(id=CART, items=[], item_count=0, total_cents=0, currency=None, status="merged", updated_at=T0)
    feed.deliver(CartUpdated(tenant="shop-1", cart=cart).model_dump_json().encode())
    assert stream.next_cart()["status"] == "merged"
    assert stream.rest() == []  # the browser reconnects and the cookie (or session) names the cart now
    assert feed.count() == 0


def test_without_a_cart_one_empty_cart_then_reconnect_later(client: FlaskClient, log: list[str]) -> None:
    stream = open_stream(client, cart_id=None)
    (chunk,) = stream.rest()
    assert chunk.startswith(f"retry: {sse.NO_CART_RETRY_MS}\nevent: cart\n")
    assert json.loads(chunk.split("data: ", 1)[1])["id"] is None
    assert log == []  # nothing to subscribe to or read


def test_nats_unreachable_asks_the_browser_to_come_back(
    client: FlaskClient, subscriptions: FakeSubscriptions, feed: sse.CartFeed
) -> None:
    subscriptions.fail = ServiceUnavailable("nats", "not connected")
    (chunk,) = open_stream(client).rest()  # a 200: after a 503 EventSource would never reconnect
    assert chunk.startswith(f"retry: {sse.UNAVAILABLE_RETRY_MS}\nevent: unavailable\n")
    assert json.loads(chunk.split("data: ", 1)[1])["error"]["code"] == "service_unavailable"
    assert feed.count() == 0


def test_the_cart_service_unavailable_leaves_no_listener(
    client: FlaskClient, bus: FakeBus, feed: sse.CartFeed
) -> None:
    bus.handlers.clear()  # nobody answers GetCart
    (chunk,) = open_stream(client).rest()
    assert "event: unavailable" in chunk
    assert feed.count() == 0


def test_a_refusal_from_the_cart_service_is_an_unavailable_event_not_a_crash(
    client: FlaskClient, bus: FakeBus, feed: sse.CartFeed
) -> None:
    def refuse(message: GetCart) -> dict[str, Any]:
        raise DomainError("cart could not apply get", code="internal_error")

    bus.handlers[GetCart] = refuse
    (chunk,) = open_stream(client).rest()
    assert chunk.startswith(f"retry: {sse.UNAVAILABLE_RETRY_MS}\nevent: unavailable\n")
    assert feed.count() == 0


def test_junk_on_the_subject_is_ignored(client: FlaskClient, feed: sse.CartFeed) -> None:
    stream = open_stream(client)
    stream.next_cart()
    for junk in (b"not json", b"{}", b'{"cart": {"id": "cart-a", "items": "no"}}'):
        feed.deliver(junk)
    assert stream.next() == ": heartbeat\n\n"
    stream.response.close()


def test_the_route_is_documented_as_an_event_stream(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    get = spec["paths"]["/api/cart/events"]["get"]
    assert set(get["responses"]["200"]["content"]) == {"text/event-stream"}
    assert "cart" in get["tags"]


def test_a_head_request_leaves_no_listener(client: FlaskClient, feed: sse.CartFeed, log: list[str]) -> None:
    client.set_cookie(CART_COOKIE, signed(CART))
    response = client.head("/api/cart/events")
    assert response.status_code == 200 and response.get_data() == b""
    assert feed.count() == 0 and "get" not in log


def test_streams_are_capped_per_cart_and_per_address(bus: FakeBus, feed: sse.CartFeed) -> None:
    """Issue 13, finding 2: 1,500 streams from one address were accepted; each holds a greenlet and a socket."""
    app = create_app(Settings(admin_token="t", secret=SECRET, tenant="shop-1", sse_max_per_cart=2,
                              sse_max_per_address=3), bus)
    app.extensions[sse.FEED] = feed
    client = app.test_client()
    streams = [open_stream(client) for _ in range(2)]  # held: a stream let go of is closed, and released
    for stream in streams:
        stream.next_cart()
    client.set_cookie(CART_COOKIE, signed(CART))
    refused = client.get("/api/cart/events")
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "too_many_streams"
    assert refused.headers["Retry-After"] == "2"
    streams.append(open_stream(client, "another-cart-0000000000000000001"))  # another cart, the address's third
    streams[-1].next_cart()
    client.set_cookie(CART_COOKIE, signed("another-cart-0000000000000000002"))
    assert client.get("/api/cart/events").status_code == 429  # the address's fourth
    elsewhere = app.test_client()
    elsewhere.set_cookie(CART_COOKIE, signed("another-cart-0000000000000000002"))
    assert elsewhere.get("/api/cart/events", buffered=False,
                         environ_base={"REMOTE_ADDR": "198.51.100.4"}).status_code == 200
