"""The gateway's Flask app factory."""

from __future__ import annotations

import sys
from collections.abc import Callable

from flask import Flask, Response

from cartwheel.settings import Settings, get_settings
from cartwheel.tenants import context as tenant_context
from services.gateway import (
    access,
    accounts,
    admin_carts,
    api,
    cart,
    downloads,
    inventory,
    mail,
    ops,
    orders,
    products,
    sse,
    webhooks,
)
from services.gateway.bridge import NatsBridge
from services.gateway.context import EXTENSION, Bus, Gateway, gateway
from services.gateway.errors import API_CSP, install_error_handlers
from services.gateway.metrics import GatewayMetrics
from services.gateway.tenancy import Hosts, StaticHosts, router
from services.gateway.web import is_page
from services.gateway.web import mount as mount_pages

MAX_JSON_BODY = 1024 * 1024  # routes that take larger bodies (images) raise request.max_content_length


def create_app(settings: Settings | None = None, bridge: Bus | None = None, hosts: Hosts | None = None) -> Flask:
    """The gateway app. Without ``bridge`` it makes a :class:`NatsBridge`, started by the server's
    ``post_worker_init`` hook (or, failing that, by the first request) — never at import. ``hosts``: the tenant
    directory (default: the bridge's live one; with a fake bus, the installation's own tenant alone)."""
    settings = settings or get_settings()
    tenant_context.set_own(settings.tenant)  # what a message left without a tenant says outside a request
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BODY
    bus = bridge or NatsBridge(settings)
    hosts = hosts or getattr(bus, "hosts", None) or StaticHosts(settings)
    app.extensions[EXTENSION] = context = Gateway(settings, bus, hosts)
    metrics = app.extensions["cartwheel.metrics"] = GatewayMetrics()
    metrics.install(app)
    access.install(app, settings.trusted_proxies)
    app.before_request(_start_bridge)
    if _gevent_patched():
        app.before_request(_yield_to_other_greenlets)
    install_error_handlers(app)
    app.after_request(_no_sniffing)
    everything = [ops.routes, products.routes, inventory.routes, cart.routes, sse.routes, admin_carts.routes]
    everything += [accounts.routes, orders.routes, orders.admin_routes, mail.routes, downloads.routes, webhooks.routes]
    context.operations = api.register(app, everything)
    mount_pages(app)  # the storefront and admin pages, a client of the routes above
    app.wsgi_app = router(app.wsgi_app, hosts, settings, is_page, _start_bridge_of(bus))  # type: ignore[method-assign]
    return app


def _start_bridge() -> None:
    bus = gateway().bus
    if not bus.started:
        bus.start()


def _start_bridge_of(bus: Bus) -> Callable[[], None]:
    def start() -> None:
        if not bus.started:
            bus.start()

    return start



def _no_sniffing(response: Response) -> Response:
    # Browsers take JSON and images as the type they are sent as, never as HTML they might guess; and even
    # one rendered as a document may load, run, frame or submit nothing.
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    return response


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def _yield_to_other_greenlets() -> None:
    # gevent's worker doesn't yield between keep-alive requests; this evens out latency tails.
    import gevent

    gevent.sleep(0)
