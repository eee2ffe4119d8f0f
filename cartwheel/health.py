"""`cartwheel health`: ask services whether they are up (over NATS; the gateway over HTTP)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import nats

from cartwheel import subjects
from cartwheel.settings import Settings


async def ping(nc: nats.NATS, service: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """One replica's health answer, or ``None`` when no replica answers in time."""
    try:
        reply = await nc.request(subjects.health(service), b"", timeout=timeout)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
        return None
    return json.loads(reply.data)


def gateway_healthy(settings: Settings, timeout: float = 2.0) -> bool:
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::") else settings.gateway_host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.gateway_port}/healthz", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


async def _check(settings: Settings, names: list[str]) -> dict[str, bool]:
    results: dict[str, bool] = {}
    backend = [n for n in names if n != "gateway"]
    if backend:
        try:
            nc = await nats.connect(settings.nats_servers, connect_timeout=2, max_reconnect_attempts=0)
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
