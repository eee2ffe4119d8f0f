"""`cartwheel health`: ask services whether they are up (over NATS; the gateway over HTTP)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import nats

from cartwheel import natsauth, subjects
from cartwheel.settings import Settings


async def ping(nc: nats.NATS, service: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """One replica's health answer, or ``None`` when no replica answers in time."""
    try:
        reply = await nc.request(subjects.health(service), b"", timeout=timeout)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
        return None
    return json.loads(reply.data)


def http_healthy(host: str, port: int, timeout: float = 2.0) -> bool:
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def gateway_healthy(settings: Settings, timeout: float = 2.0) -> bool:
    return http_healthy(settings.gateway_host, settings.gateway_port, timeout)


def check_local(settings: Settings, names: list[str]) -> bool:
    """This machine's instance only (its own /healthz), so one sick replica of several is seen as sick."""
    ok = all(
        gateway_healthy(settings) if name == "gateway" else http_healthy(settings.metrics_host, settings.metrics_port)
        for name in names
    )
    print(f"{', '.join(names)} (this instance): {'ok' if ok else 'NOT HEALTHY'}")
    return ok


async def _check(settings: Settings, names: list[str]) -> dict[str, bool]:
    results: dict[str, bool] = {}
    backend = [n for n in names if n != "gateway"]
    if backend:
        try:
            nc = await nats.connect(settings.nats_servers, connect_timeout=2, max_reconnect_attempts=0,
                                     **natsauth.connect_options(settings, natsauth.ADMIN))
        except Exception:
            return {name: False for name in names}
        try:
            answers = await asyncio.gather(*(ping(nc, name) for name in backend))
        finally:
            await nc.close()
        results = {name: bool(a and a.get("status") == "ok") for name, a in zip(backend, answers, strict=True)}
    if "gateway" in names:
        results["gateway"] = gateway_healthy(settings)
    return results


def check_services(settings: Settings, names: list[str], quiet: bool = False) -> bool:
    """True when every named service answers healthy; prints one line per service unless ``quiet``."""
    results = asyncio.run(_check(settings, names))
    if not quiet:
        for name in names:
            print(f"{name}: {'ok' if results.get(name) else 'NOT HEALTHY'}")
    return all(results.get(name) for name in names)
