"""``GET /api/cart/events``: the visitor's cart as Server-Sent Events, after every change from any tab or device.

The cart lane writes a ``CartUpdated`` event (the whole cart) to the outbox after each change; the
relay publishes it to JetStream, and core-NATS subscribers of ``events.cart.updated`` see it too.

Why one subscription per worker process, fanned out in process, and not a subject per cart:

- each open stream costs a greenlet, a socket and a :class:`Listener` (a mailbox), nothing on the
  NATS server; opening a stream needs no SUB round trip, and 2,000 streams are 2,000 dict entries;
- the event keeps its subject, which the cart service, its tests and every ``events.cart.updated``
  consumer rely on (``tests/unit/test_cart_domain.py`` pins it);
- the price: every worker receives every cart update and decodes those of the carts it watches
  (the cart lane makes a few hundred changes per second at most; a few microseconds each).
  Should that ever matter, per-cart subjects (``events.cart.updated.<cart_id>``, inside
  ``events.>``) let the NATS server filter, at one subscription per watched cart.

Ordering: the listener is subscribed (the worker's subscription is known to the server) before the
current cart is read, so no change falls between the two; a cart older than the one last sent is
never sent (its ``version``; not ``updated_at``: that is the clock of whichever server took the
command, and on a cluster two servers' clocks disagree), and a mailbox holds only the newest cart,
so a slow client skips intermediate carts instead of queueing them.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, request
from prometheus_client import Gauge
from pydantic import ValidationError

from cartwheel import subjects
from cartwheel.contracts.cart import CartView, GetCart
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.tenants.context import serving
from services.gateway import ratelimit, store
from services.gateway.api import Routes
from services.gateway.cart import CartOut
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.errors import ApiError
from services.gateway.session import current_shopper, session_token

log = logging.getLogger("cartwheel.gateway.sse")

routes = Routes(tag="cart")

EVENT_STREAM = "text/event-stream"
HEARTBEAT_SECONDS = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 2_000  # EventSource reconnects this long after a stream ends (worker restart, NATS gap)
NO_CART_RETRY_MS = 30_000  # a visitor without a cart reconnects this often, to pick up the cookie the first add sets
UNAVAILABLE_RETRY_MS = 5_000
FEED = "cartwheel.cart_feed"
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy may keep or buffer the stream
ENDS_STREAM = frozenset({"merged"})  # the visitor's cart is now another one: reconnect to find it
_OLDEST = datetime.min.replace(tzinfo=UTC)

# Summed over live workers (prometheus multiprocess mode), so an operator sees what streams cost.
OPEN_STREAMS = Gauge(
    "cartwheel_gateway_cart_streams", "Open cart event streams.", multiprocess_mode="livesum", registry=None
)

Subscribe = Callable[[str, Callable[[bytes], None]], Callable[[], None]]


class Listener:
    """One open stream's mailbox: only the newest cart waits in it (a slow client skips carts, never queues them)."""

    def __init__(self, tenant: str, cart_id: str, address: str = "") -> None:
        self.tenant = tenant
        self.cart_id = cart_id
        self.address = address  # the client's, for the per-address cap
        self.ended = False  # the client hung up, or the worker is stopping
        self._wake = threading.Event()  # a gevent Event once monkey-patched: waiting yields to other requests
        self._lock = threading.Lock()
        self._cart: CartView | None = None
        self._resync = False

    def offer(self, cart: CartView) -> None:
        with self._lock:
            if self._cart is None or not _older(cart, self._cart):
                self._cart = cart
        self._wake.set()

    def resync(self) -> None:
        """Events may have been missed (NATS reconnected): the stream reads the cart again."""
        self._resync = True
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    def wait(self, timeout: float) -> tuple[CartView | None, bool]:
        """Wait up to ``timeout`` s for news: the newest cart offered (or None), and whether to read it again."""
        self._wake.wait(timeout)
        with self._lock:
            self._wake.clear()
            cart, self._cart = self._cart, None
            resync, self._resync = self._resync, False
        return cart, resync


class CartFeed:
    """One worker's subscription to ``events.cart.updated``, fanned out to the listeners of each cart: a cart is
    named by its tenant and its id, so a stream at one shop never hears another shop's events."""

    def __init__(self, subscribe: Subscribe, *, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.heartbeat = heartbeat
        self._subscribe = subscribe
        self._listeners: dict[tuple[str, str], set[Listener]] = {}  # (tenant, cart id) -> its streams
        self._lock = threading.Lock()
        self._opening = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False

    def listen(self, tenant: str, cart_id: str, address: str = "") -> Listener:
        """A listener of ``tenant``'s cart ``cart_id`` for a client at ``address``; every update published after
        this returns reaches it.

        Raises :class:`ServiceUnavailable` when NATS is unreachable or the worker is stopping.
        """
        self._ensure_subscribed()
        listener = Listener(tenant, cart_id, address)
        with self._lock:
            if self._closed:
                raise ServiceUnavailable("cart events", "the gateway worker is stopping")
            self._listeners.setdefault((tenant, cart_id), set()).add(listener)
        OPEN_STREAMS.inc()
        return listener

    def release(self, listener: Listener) -> None:
        """Forget ``listener`` (safe to call twice)."""
        with self._lock:
            key = (listener.tenant, listener.cart_id)
            listeners = self._listeners.get(key)
            if listeners is None or listener not in listeners:
                return
            listeners.discard(listener)
            if not listeners:
                del self._listeners[key]
        OPEN_STREAMS.dec()

    def count(self, cart_id: str | None = None, tenant: str | None = None) -> int:
        """Open listeners, of one cart (of one tenant, or of any) or of all."""
        with self._lock:
            return sum(len(listeners) for (of, cart), listeners in self._listeners.items()
                       if cart_id in (None, cart) and tenant in (None, of))

    def count_from(self, address: str) -> int:
        """Open listeners of a client address, whatever their carts."""
        with self._lock:
            return sum(listener.address == address for listeners in self._listeners.values() for listener in listeners)

    def refuse_if_full(self, tenant: str, cart_id: str, address: str, per_cart: int, per_address: int) -> None:
        """429 when the cart, or the client's address, already has its share of open streams in this worker."""
        if self.count(cart_id, tenant) >= per_cart:
            raise ApiError(429, "too_many_streams", "this cart has too many open event streams; close a tab",
                           {"Retry-After": str(RETRY_MS // 1000)})
        if self.count_from(address) >= per_address:
            raise ApiError(429, "too_many_streams", "too many open event streams from your address",
                           {"Retry-After": str(RETRY_MS // 1000)})

    def deliver(self, data: bytes) -> None:
        """A ``CartUpdated`` event as published (runs on the NATS loop: it must not block)."""
        if not self._listeners:  # nobody watches any cart: skip the decoding
            return
        try:
            event = json.loads(data)
            tenant, cart = event["tenant"], event["cart"]
            cart_id = cart["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("cart event without a tenant and a cart: %.200r", data)
            return
        with self._lock:
            targets = list(self._listeners.get((tenant, cart_id), ()))
        if not targets:
            return
        try:
            view = CartView.model_validate(cart)
        except ValidationError:
            log.warning("cart event with an invalid cart: %.200r", data)
            return
        for listener in targets:
            listener.offer(view)

    def resync_all(self) -> None:
        for listener in self._all():
            listener.resync()

    def close(self) -> None:
        """End every stream (they return at once, and their browsers reconnect elsewhere) and unsubscribe."""
        with self._lock:
            self._closed = True
        for listener in self._all():
            listener.end()
        if self._unsubscribe is not None:
            self._unsubscribe()

    def _all(self) -> list[Listener]:
        with self._lock:
            return [listener for listeners in self._listeners.values() for listener in listeners]

    def _ensure_subscribed(self) -> None:
        if self._unsubscribe is not None:
            return
        with self._opening:  # the first streams of a worker wait for one subscription, not one each
            if self._unsubscribe is None:
                self._unsubscribe = self._subscribe(subjects.CART_UPDATED, self.deliver)


def cart_feed(app: Flask) -> CartFeed:
    """The worker's feed, made on the first stream (tests put their own under ``FEED``)."""
    feed = app.extensions.get(FEED)
    if feed is None:
        bus: Any = app.extensions["cartwheel.gateway"].bus
        if not hasattr(bus, "subscribe"):  # a fake bus without subscriptions
            raise ServiceUnavailable("cart events", "this gateway's bus cannot subscribe")
        feed = app.extensions.setdefault(FEED, CartFeed(bus.subscribe))
        if hasattr(bus, "on_reconnect"):
            bus.on_reconnect(feed.resync_all)
    return feed


def end_streams(app: Flask) -> None:
    """The worker is stopping: end every open stream now instead of holding the graceful shutdown."""
    feed = app.extensions.get(FEED)
    if feed is not None:
        feed.close()


@routes.get(
    "/api/cart/events",
    summary=(
        "The visitor's cart as Server-Sent Events: a `cart` event (data as GET /api/cart) now and after "
        "every change, a comment line every 15 s; without a cart one empty `cart` event, then reconnect"
    ),
    media_type=EVENT_STREAM,
    errors=(429,),
)
def cart_events() -> Response:
    try:
        shopper = current_shopper()  # a signed-in shopper's cart on every device, else the cookie's
    except ServiceUnavailable as error:  # the gateway database: a 503 would stop EventSource for good
        return _respond(_unavailable(error))
    cart_id = shopper.cart_id
    if cart_id is None:
        return _respond(_once(NO_CART_RETRY_MS, "cart", CartOut.empty().model_dump_json()))
    ctx = gateway()
    bus, tenant = ctx.bus, current_tenant()

    def read() -> CartView:
        try:
            return CartView.model_validate(bus.request(GetCart(tenant=tenant, cart_id=cart_id)))
        except (DomainError, ValidationError) as error:  # the cart service refused or answered nonsense
            raise ServiceUnavailable("cart", str(error)[:200]) from None

    allowed = _session_alive(current_app._get_current_object(), tenant, session_token(), cart_id) if shopper.signed_in \
        else _always
    try:
        feed = cart_feed(current_app)
    except ServiceUnavailable as error:
        return _respond(_unavailable(error))
    address = ratelimit.client_address()
    feed.refuse_if_full(tenant, cart_id, address, ctx.settings.sse_max_per_cart, ctx.settings.sse_max_per_address)
    return _respond(_updates(feed, tenant, cart_id, read, request.environ, allowed, address))


def _session_alive(app: Flask, tenant: str, token: str | None, cart_id: str) -> Callable[[], bool]:
    """Whether the stream's session still holds that cart: asked before every event and heartbeat, so a
    stream opened with a session ends when the session does (logout, expiry), like the cookie itself."""

    def alive() -> bool:
        if token is None:
            return False
        with app.app_context(), serving(tenant):  # the stream runs after the request: its tenant goes along
            try:
                user = store.user_of_session(token)
            except ServiceUnavailable:
                return False  # the browser reconnects and is asked again
        return user is not None and user.cart_id == cart_id

    return alive


def _always() -> bool:
    return True


def _updates(
    feed: CartFeed,
    tenant: str,
    cart_id: str,
    read: Callable[[], CartView],
    environ: dict[str, Any],
    allowed: Callable[[], bool] = _always,
    address: str = "",
) -> Iterator[bytes]:
    """The stream's body. It starts listening only once the server iterates it (a HEAD never does),
    and its ``finally`` lets go however the stream ends (closing a generator raises GeneratorExit at
    its ``yield``; gevent kills a greenlet with GreenletExit wherever it waits)."""
    try:
        listener = feed.listen(tenant, cart_id, address)  # before reading the cart: no change can fall between the two
    except ServiceUnavailable as error:
        yield from _unavailable(error)
        return
    stop_watching: Callable[[], None] = _ignore
    try:
        try:
            last = read()
        except ServiceUnavailable as error:
            yield from _unavailable(error)
            return
        stop_watching = _watch_hangup(environ, listener.end)
        yield _field("retry", str(RETRY_MS)) + _event("cart", last.model_dump_json())
        last_write = time.monotonic()
        while not listener.ended and last.status not in ENDS_STREAM:
            cart, resync = listener.wait(max(0.0, last_write + feed.heartbeat - time.monotonic()))
            if listener.ended:
                return
            if resync:
                try:
                    fresh = read()
                except ServiceUnavailable:
                    return  # the browser reconnects and reads the cart again
                cart = fresh if cart is None or not _older(fresh, cart) else cart
            if not allowed():
                return
            if cart is not None and cart != last and not _older(cart, last):
                yield _event("cart", cart.model_dump_json())
                last, last_write = cart, time.monotonic()
            elif time.monotonic() >= last_write + feed.heartbeat:
                yield b": heartbeat\n\n"
                last_write = time.monotonic()
    finally:
        stop_watching()
        feed.release(listener)


def _unavailable(error: ServiceUnavailable) -> Iterator[bytes]:
    # A 503 would make EventSource give up for good; a 200 that ends with a retry makes it come back.
    body = json.dumps({"error": {"code": "service_unavailable", "message": f"{error.subject}: {error.reason}"}})
    return _once(UNAVAILABLE_RETRY_MS, "unavailable", body)


def _ignore() -> None:
    pass


def _watch_hangup(environ: dict[str, Any], on_hangup: Callable[[], None]) -> Callable[[], None]:
    """Under gevent, call ``on_hangup`` as soon as the client's socket turns readable: an EventSource
    sends nothing after its request, so that is the hang-up. Without it a closed tab is noticed only
    when the next heartbeat fails to write, up to 15 s later. Returns the function that stops watching."""
    sock = environ.get("gunicorn.socket")
    monkey = sys.modules.get("gevent.monkey")
    if sock is None or monkey is None or not monkey.is_module_patched("socket"):
        return _ignore
    from gevent import get_hub

    watcher = get_hub().loop.io(sock.fileno(), 1)  # 1: readable

    def fire() -> None:
        watcher.stop()  # level-triggered: once is enough
        on_hangup()

    watcher.start(fire)

    def stop() -> None:
        watcher.stop()
        watcher.close()

    return stop


def _respond(body: Iterator[bytes]) -> Response:
    return Response(body, mimetype=EVENT_STREAM, headers=HEADERS)


def _once(retry_ms: int, name: str, data: str) -> Iterator[bytes]:
    yield _field("retry", str(retry_ms)) + _event(name, data)


def _event(name: str, data: str) -> bytes:
    return _field("event", name) + _field("data", data) + b"\n"


def _field(name: str, value: str) -> bytes:
    return f"{name}: {value}\n".encode()


def _older(cart: CartView, than: CartView) -> bool:
    return (cart.version, cart.updated_at or _OLDEST) < (than.version, than.updated_at or _OLDEST)
