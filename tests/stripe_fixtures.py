"""The embedded Stripe-compatible server for tests: ``from tests.stripe_fixtures import localstripe  # noqa: F401``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cartwheel.localstripe import start_localstripe, version


def _report(config: pytest.Config, backend: str, what: str) -> None:
    """Add a line to the closing summary the root conftest prints (``<backend>: <what>``)."""
    for plugin in config.pluginmanager.get_plugins():
        used = getattr(plugin, "_used", None)
        if str(getattr(plugin, "__file__", "")).endswith("tests/conftest.py") and isinstance(used, dict):
            used[backend] = what
            return
    print(f"{backend}: {what}")


@pytest.fixture(scope="session")
def localstripe(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """API base URL of the embedded payment server shared by the session: the Stripe stand-in in front of
    localstripe (state in memory, bound to 127.0.0.1)."""
    log_path = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    server = start_localstripe(log_path=log_path)
    _report(pytestconfig, "localstripe", f"local server {version()} behind the stand-in on {server.host}:{server.port} "
                                         f"(log {log_path})")
    try:
        yield server.url
    finally:
        server.stop()


class WebhookEndpoint:
    """A loopback HTTP endpoint for Stripe's webhooks: each POST's raw body and its Stripe-Signature go to
    ``receive``, whose answer is the status sent back. ``server.shutdown()`` stops it."""

    def __init__(self, receive: Callable[[bytes, str], int]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(receive(body, self.headers.get("Stripe-Signature", "")))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
