"""Which tenant a request is for: its Host (behind trusted proxies, the nearest proxy's X-Forwarded-Host), looked
up in the tenant directory (the registry's KV mirror, a live copy in each worker: a dict get per request).

The router runs around the whole app (API and pages) before any view, and serves the request inside
:func:`cartwheel.tenants.context.serving` of its tenant, so :func:`services.gateway.context.tenant` names it
everywhere. A host no tenant serves (or a disabled tenant's) is a 404: the API's error shape under /api, a
plain page elsewhere. The ops endpoints (:data:`HOST_FREE`) answer for the installation, whatever the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from werkzeug.wrappers import Response

from cartwheel import subjects
from cartwheel.settings import Settings
from cartwheel.tenants import context
from cartwheel.tenants.mirror import Directory, Entry, own_hosts, tenant_at
from cartwheel.tenants.names import normal_host
from services.gateway.errors import API_CSP

HOST_FREE = frozenset({"/healthz", "/readyz", "/metrics"})
SYNC_WAIT = 2.0  # seconds a request waits for a worker's first copy of the directory; then 503
SYNC_POLL = 0.05
RETRY_AFTER = "1"
TENANT = "cartwheel.tenant"  # the environ key of the request's tenant
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

NOT_FOUND_PAGE = (b"<!doctype html><html lang=en><meta charset=utf-8><title>Not found</title>"
                  b"<h1>Not found</h1><p>There is no shop at this address.</p></html>")


class Hosts(Protocol):
    """What the gateway asks of the tenant directory."""

    @property
    def loaded(self) -> bool: ...

    def tenant_of(self, host: str) -> str | None: ...

    def is_own_host(self, host: str) -> bool: ...

    def entry(self, name: str) -> Entry | None: ...


class LiveHosts:
    """The registry's mirror (:class:`Directory`), ``loaded`` from its first full copy on; after a reconnect the
    last copy keeps answering while the watch starts over (a tenant made meanwhile waits for it). A NATS without
    the bucket has no tenant registered: loaded (and empty) too, until the bucket comes and is watched."""

    def __init__(self, settings: Settings, client: Callable[[], Any]) -> None:
        self.directory = Directory(settings, client)
        self._client = client
        self._loaded = False
        self._looking: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        if not self._loaded and self.directory.mirror.synced:
            self._loaded = True
        return self._loaded

    def tenant_of(self, host: str) -> str | None:
        return self.directory.tenant_of(host)

    def is_own_host(self, host: str) -> bool:
        return normal_host(host) in self.directory.own_hosts

    def entry(self, name: str) -> Entry | None:
        return self.directory.entry(name)

    def start(self) -> None:
        """On the bridge's loop."""
        self.directory.mirror.start()
        if self._looking is None:
            self._looking = asyncio.get_running_loop().create_task(self._look_for_bucket())

    async def stop(self) -> None:
        if self._looking is not None:
            self._looking.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._looking
            self._looking = None
        await self.directory.mirror.stop()

    async def _look_for_bucket(self) -> None:
        while not self.loaded:
            nc = self._client()
            if nc is not None and nc.is_connected:
                try:
                    await nc.jetstream().stream_info(subjects.kv_stream(subjects.TENANTS_BUCKET))
                    return  # it exists: the watch loads it
                except nats.js.errors.NotFoundError:
                    self._loaded = True
                    return
                except (nats.errors.Error, TimeoutError):
                    pass
            await asyncio.sleep(SYNC_POLL)


class StaticHosts:
    """A directory that never changes: the installation's own tenant, plus ``entries`` (a gateway with a fake
    bus, and unit tests)."""

    def __init__(self, settings: Settings, entries: Iterable[Entry] = ()) -> None:
        self.own = settings.tenant
        self.own_hosts, self.own_takes_any = own_hosts(settings)
        self.entries = {entry.name: entry for entry in entries}
        self.by_host = {host: entry for entry in self.entries.values() for host in entry.hosts}

    @property
    def loaded(self) -> bool:
        return True

    def tenant_of(self, host: str) -> str | None:
        return tenant_at(host, self.by_host, self.own, self.own_hosts, self.own_takes_any)

    def is_own_host(self, host: str) -> bool:
        return normal_host(host) in self.own_hosts

    def entry(self, name: str) -> Entry | None:
        return self.entries.get(name)


def request_host(environ: dict[str, Any], trusted_proxies: int) -> str:
    """The host the client asked for: behind trusted proxies the last X-Forwarded-Host value (the one the
    nearest proxy set or appended; a client's own comes before it), else the Host header."""
    if trusted_proxies:
        forwarded = environ.get("HTTP_X_FORWARDED_HOST", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""


def router(app: WSGIApp, hosts: Hosts, settings: Settings, is_page: Callable[[str], bool],
           start: Callable[[], None]) -> WSGIApp:
    """``app`` served in the tenant of each request's host; 404 for a host no tenant serves."""

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in HOST_FREE:
            return app(environ, start_response)
        host = request_host(environ, settings.trusted_proxies)
        if not hosts.loaded and not hosts.is_own_host(host):
            start()  # the bridge (and with it the directory's watch), if no request started it yet
            if not _wait_loaded(hosts):
                return _refusal(503, "service_unavailable", "the shop is starting; try again shortly",
                                is_page(path), {"Retry-After": RETRY_AFTER})(environ, start_response)
        tenant = hosts.tenant_of(host)
        if tenant is None:
            return _refusal(404, "unknown_host", "there is no shop at this host", is_page(path))(
                environ, start_response)
        environ[TENANT] = tenant
        token = context.enter(tenant)
        try:
            return app(environ, start_response)
        finally:
            context.leave(token)

    return route


def _wait_loaded(hosts: Hosts) -> bool:
    deadline = time.monotonic() + SYNC_WAIT
    while not hosts.loaded and time.monotonic() < deadline:
        time.sleep(SYNC_POLL)  # a gevent sleep in the workers: other requests go on
    return hosts.loaded


def _refusal(status: int, code: str, message: str, page: bool, headers: dict[str, str] | None = None) -> Response:
    if page:
        body = NOT_FOUND_PAGE if status == 404 else b"<!doctype html><title>Starting</title><p>Try again shortly.</p>"
        response = Response(body, status=status, mimetype="text/html", headers=headers)
        response.headers["Cache-Control"] = "no-store"
    else:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        response = Response(body, status=status, mimetype="application/json", headers=headers)
        response.headers["Content-Security-Policy"] = API_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
