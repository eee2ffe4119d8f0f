"""What one client may hold of a gateway worker: requests in flight per address, and time to send a body.

A probe with 2,000 connections, each sending headers and one byte of a 100-byte body, made a one-worker
gateway stop answering: every connection held a greenlet reading a body that never came (gunicorn's
timeouts cover the headers, not the body). Two limits, applied around the Flask app under gunicorn:

- **in flight per address**: past ``gateway_max_requests_per_address`` requests from one client address
  (as :func:`client_address` reads it, behind ``trusted_proxies``), a request is answered 429 at once,
  before its body is read, and its connection closed (:data:`CLOSE`). SSE streams count while they are open.
- **body deadline**: a body must arrive within ``request_body_seconds`` plus its declared size at
  ``request_body_min_rate`` bytes/s; slower, the request is answered 408 and its connection closed.

Counts are per worker process (each worker serves its own connections).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

from werkzeug.exceptions import RequestTimeout
from werkzeug.wsgi import ClosingIterator

from cartwheel.settings import Settings
from services.gateway.errors import API_CSP

CHUNKED_BODY_BYTES = 8 * 1024 * 1024
"""A chunked body declares no size: it gets the time of the largest the gateway takes (an image, 5 MB)."""
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ADDRESS = "cartwheel.client_address"  # the environ key of the address this request counts against
CLOSE = "cartwheel.close_connection"
"""Set in a request's environ when its connection must not serve another request (its body is left unread):
gunicorn ignores an app's ``Connection: close``, so server.py's ``post_request`` hook closes it."""


def client_address(environ: dict[str, Any], trusted_proxies: int) -> str:
    """The client's address: X-Forwarded-For only past ``trusted_proxies`` hops, else the peer's.

    An IPv6 client counts as its /64: one subscriber gets a whole /64, so one address per try costs nothing.
    """
    address = environ.get("REMOTE_ADDR") or "unknown"
    if trusted_proxies:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
        hops = [hop.strip() for hop in forwarded.split(",")] if forwarded else []
        if len(hops) >= trusted_proxies and hops[-trusted_proxies]:
            address = hops[-trusted_proxies]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class ClientGuard:
    """WSGI middleware (gunicorn only: it needs the connection's socket for the body deadline)."""

    def __init__(self, app: WSGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._open: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        address = client_address(environ, self.settings.trusted_proxies)
        environ[ADDRESS] = address
        with self._lock:
            full = self._open[address] >= self.settings.gateway_max_requests_per_address
            if not full:
                self._open[address] += 1
        if full:
            environ[CLOSE] = True
            return _too_many(start_response)
        sock = environ.get("gunicorn.socket")
        if sock is not None and _has_body(environ):
            environ["wsgi.input"] = DeadlineInput(environ["wsgi.input"], sock, self._deadline(environ), environ)

        def release() -> None:
            with self._lock:
                self._open[address] -= 1
                if self._open[address] <= 0:
                    del self._open[address]
            if sock is not None:
                sock.settimeout(None)  # gunicorn's own (blocking) for the next request on this connection

        try:
            return ClosingIterator(self.app(environ, start_response), [release])
        except BaseException:
            release()
            raise

    def _deadline(self, environ: dict[str, Any]) -> float:
        declared = environ.get("CONTENT_LENGTH") or ""
        size = int(declared) if declared.isdigit() else CHUNKED_BODY_BYTES
        return time.monotonic() + self.settings.request_body_seconds + size / self.settings.request_body_min_rate


class DeadlineInput:
    """``wsgi.input`` that gives up (408) once the body's deadline passes, however the client drips it."""

    def __init__(self, inner: IO[bytes], sock: socket.socket, deadline: float, environ: dict[str, Any]) -> None:
        self._inner = inner
        self._sock = sock
        self._deadline = deadline
        self._environ = environ

    def read(self, size: int | None = -1) -> bytes:
        return self._guarded(lambda: self._inner.read(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._guarded(lambda: self._inner.readline(size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._guarded(lambda: self._inner.readlines(hint))

    def __iter__(self) -> DeadlineInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _guarded(self, read: Callable[[], Any]) -> Any:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._give_up()
        self._sock.settimeout(remaining)
        try:
            return read()
        except TimeoutError:  # socket.timeout: nothing arrived before the deadline
            self._give_up()

    def _give_up(self) -> None:
        self._environ[CLOSE] = True  # the rest of the body is unread: this connection can't serve another request
        raise RequestTimeout("the request body did not arrive in time")


def _has_body(environ: dict[str, Any]) -> bool:
    declared = environ.get("CONTENT_LENGTH") or ""
    return (declared.isdigit() and int(declared) > 0) or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _too_many(start_response: Callable[..., Any]) -> list[bytes]:
    """429, written here: the request never reaches Flask (its body unread)."""
    body = json.dumps({"error": {"code": "too_many_requests",
                                 "message": "too many requests in flight from your address; try again shortly"}},
                      separators=(",", ":")).encode()
    start_response("429 Too Many Requests", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Retry-After", "1"),
        ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", API_CSP),
    ])
    return [body]
