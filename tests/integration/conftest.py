"""Run real services in-process (a thread with its own event loop) against the session's NATS and a test DB."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from cartwheel.service import Service
from cartwheel.settings import Settings


class ServiceThread:
    """A :class:`Service` started and stopped the way ``cartwheel run`` does, minus signal handling."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"svc-{service.name}", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.service.app.start())
        except BaseException as exc:  # surfaced to the test by start()
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.service.app.stop())
        self._loop.close()

    def start(self) -> ServiceThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"{self.service.name} did not start within 30 s")
        if self._failure:
            raise self._failure
        self._wait_until_answering()
        return self

    def _wait_until_answering(self, timeout: float = 10.0) -> None:
        """Ask the service's health subject from a connection of its own until it answers: the first request
        of a test found "no service is listening" now and then, right after a start that had flushed."""
        from cartwheel import subjects

        async def probe() -> None:
            nc = await nats.connect(self.service.settings.nats_servers[0])
            try:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        await nc.request(subjects.health(self.service.name), b"", timeout=1)
                        return
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
            finally:
                await nc.close()

        asyncio.run_coroutine_threadsafe(probe(), self._loop).result(timeout + 5)  # callers may be in a loop

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(20)
        if self._thread.is_alive():  # a service still answering would poison later tests
            raise RuntimeError(f"{self.service.name} did not stop within 20 s")


def settings_for(nats_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(**{"nats_url": nats_url, "var_dir": tmp_path, "metrics_port": 0, "admin_token": "t" * 24,
                       "secret": "s" * 32, **overrides})


@pytest.fixture
def start_service(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., ServiceThread]]:
    """``start_service("catalog", catalog_database_url=...)`` runs that service until the test ends."""
    started: list[ServiceThread] = []

    def start(name: str, **overrides: Any) -> ServiceThread:
        settings = settings_for(nats_url, tmp_path, **overrides)
        runner = ServiceThread(importlib.import_module(f"services.{name}.app").build(settings)).start()
        started.append(runner)
        return runner

    yield start
    for runner in reversed(started):
        runner.stop()


class Client:
    """A blocking NATS client for tests: ``client.run(coro_fn)`` runs ``coro_fn(nc)`` on its loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc: nats.NATS = self.loop.run_until_complete(nats.connect(url))

    def run(self, fn: Callable[[nats.NATS], Any]) -> Any:
        return self.loop.run_until_complete(fn(self.nc))

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


@pytest.fixture
def client(nats_url: str) -> Iterator[Client]:
    c = Client(nats_url)
    yield c
    c.close()


def register_tenants(nats_url: str, settings: Settings, *tenants: tuple[str, list[str], dict[str, str]]) -> None:
    """Register ``tenants`` (name, hosts, settings) in ``settings``' control database and publish the registry to
    the tests' NATS, as ``cartwheel tenants create`` does (their databases are the test's to make)."""
    from cartwheel.bus import declare_topology
    from cartwheel.tenants.mirror import sync
    from cartwheel.tenants.registry import Registry

    registry = Registry(settings.control_url, reserved=[settings.tenant])
    try:
        known = set(registry.names())
        registry.create_many([t for t in tenants if t[0] not in known])

        async def publish() -> None:
            nc = await nats.connect(nats_url)
            try:
                await declare_topology(nc.jetstream(), settings, update=False)
                await sync(settings, registry)
            finally:
                await nc.close()

        asyncio.run(publish())
    finally:
        registry.close()
