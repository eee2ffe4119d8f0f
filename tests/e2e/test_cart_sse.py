"""The cart event stream through the real gateway (gunicorn, gevent workers), cart service and outbox relay."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from cartwheel.supervisor import System
from tests.e2e.test_accounts_http import login, new_email, register
from tests.e2e.test_cart_http import product

TIMEOUT = 10
WAIT = 5.0  # generous: the stream is expected to see a change well within a second
STREAMS_METRIC = "cartwheel_gateway_cart_streams"


class EventStream:
    """A client of ``GET /api/cart/events`` reading in a thread: the events it got, as (name, data)."""

    def __init__(self, base_url: str, cookie: str | None = None, session: str | None = None) -> None:
        url = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        headers = {"Accept": "text/event-stream"}
        if cookie or session:
            headers["Cookie"] = f"cart={cookie}" if cookie else f"session={session}"
        self.connection.request("GET", "/api/cart/events", headers=headers)
        self.socket = self.connection.sock
        self.response = self.connection.getresponse()
        self.events: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.fields: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        name, data = "message", []
        try:
            while line := self.response.readline():
                text = line.decode().rstrip("\n")
                if text == "":
                    if data:
                        self.events.put((name, "\n".join(data)))
                    name, data = "message", []
                elif not text.startswith(":"):
                    field, _, value = text.partition(": ")
                    self.fields.append(field)
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)
        except (OSError, ValueError):  # closed by the test
            pass
        finally:
            self.events.put(None)  # the stream ended

    def next_event(self, timeout: float = WAIT) -> tuple[str, str] | None:
        return self.events.get(timeout=timeout)

    def next_cart(self, timeout: float = WAIT) -> dict[str, Any]:
        event = self.next_event(timeout)
        assert event is not None and event[0] == "cart", event
        return json.loads(event[1])

    def wait_for_cart(self, check: Any, timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            cart = self.next_cart(max(0.01, deadline - time.monotonic()))
            if check(cart):
                return cart

    def close(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(OSError):  # already closed by the server
                self.socket.shutdown(socket.SHUT_RDWR)
        self._reader.join(TIMEOUT)  # before closing: http.client's objects are not shared safely between threads
        self.connection.close()


def cart_of(system: System, tea: dict[str, Any], quantity: int = 1) -> requests.Session:
    shopper = requests.Session()
    added = shopper.post(
        f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": quantity}, timeout=TIMEOUT
    )
    assert added.status_code == 200, added.text
    return shopper


def open_streams(system: System) -> float:
    """The gateway's open cart streams, summed over its workers (from /metrics)."""
    admin = {"Authorization": f"Bearer {system.admin_token}"}
    text = requests.get(f"{system.base_url}/metrics", headers=admin, timeout=TIMEOUT).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(STREAMS_METRIC + " ")]
    return sum(values)


def wait_until(condition: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_second_tab_sees_the_first_tabs_change_and_other_carts_do_not(system: System) -> None:
    tea = product(system)
    first_tab = cart_of(system, tea)
    cookie = first_tab.cookies["cart"]
    stranger = cart_of(system, tea)
    second_tab = EventStream(system.base_url, cookie)
    strangers_tab = EventStream(system.base_url, stranger.cookies["cart"])
    try:
        assert second_tab.response.status == 200
        assert second_tab.response.getheader("Content-Type", "").startswith("text/event-stream")
        assert second_tab.response.getheader("Cache-Control") == "no-store"
        assert second_tab.response.getheader("X-Accel-Buffering") == "no"
        current = second_tab.next_cart()  # a fresh tab has the cart at once
        assert current["item_count"] == 1 and current["items"][0]["product_id"] == tea["id"]
        assert second_tab.fields[0] == "retry"
        assert strangers_tab.next_cart()["id"] not in (None, current["id"])  # its own cart
        changed = first_tab.patch(
            f"{system.base_url}/api/cart/items/{tea['id']}", json={"quantity": 3}, timeout=TIMEOUT
        )
        assert changed.status_code == 200, changed.text
        seen = second_tab.wait_for_cart(lambda cart: cart["item_count"] == 3)
        assert seen["total_cents"] == 3 * 450 and seen["id"] == current["id"]
        time.sleep(1.0)  # the other cart's stream had as long as this one to (wrongly) see it
        assert strangers_tab.events.empty(), strangers_tab.events.get()
    finally:
        second_tab.close()
        strangers_tab.close()


def test_a_stream_the_client_closed_is_released(system: System) -> None:
    tea = product(system)
    shopper = cart_of(system, tea)
    before = open_streams(system)
    stream = EventStream(system.base_url, shopper.cookies["cart"])
    try:
        stream.next_cart()
        assert wait_until(lambda: open_streams(system) == before + 1), open_streams(system)
    finally:
        stream.close()
    # Well before the next heartbeat (15 s) could reveal the hang-up: the gateway noticed the socket closing.
    assert wait_until(lambda: open_streams(system) == before), open_streams(system)
    # And the worker still serves that cart's next stream.
    again = EventStream(system.base_url, shopper.cookies["cart"])
    try:
        assert again.next_cart()["item_count"] == 1
    finally:
        again.close()


def test_a_visitor_without_a_cart_gets_an_empty_cart_and_a_later_retry(system: System) -> None:
    stream = EventStream(system.base_url)
    try:
        cart = stream.next_cart()
        assert cart["id"] is None and cart["items"] == []
        assert stream.next_event() is None  # the stream ends; EventSource reconnects after `retry`
        assert stream.fields[0] == "retry"
    finally:
        stream.close()


def test_a_signed_in_shoppers_other_device_sees_the_change(system: System) -> None:
    tea, email = product(system), new_email()
    register(system, email)
    laptop, phone = requests.Session(), requests.Session()
    login(system, laptop, email)
    laptop.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1}, timeout=TIMEOUT)
    login(system, phone, email)
    stream = EventStream(system.base_url, session=phone.cookies["session"])
    try:
        assert stream.next_cart()["item_count"] == 1
        laptop.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 2}, timeout=TIMEOUT)
        assert stream.wait_for_cart(lambda cart: cart["item_count"] == 3)["items"][0]["product_id"] == tea["id"]
        assert phone.post(f"{system.base_url}/api/auth/logout", timeout=TIMEOUT).status_code == 204
        laptop.post(f"{system.base_url}/api/cart/items", json={"product_id": tea["id"], "quantity": 1}, timeout=TIMEOUT)
        assert stream.next_event() is None  # the session ended: its stream ends instead of sending the cart
    finally:
        stream.close()
