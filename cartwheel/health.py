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


NATS_CONNECT_SECONDS = 2.0


async def _quiet(_error: Exception) -> None:
    """nats-py's default error callback logs a traceback per failed attempt: the reason is printed once instead."""


def _why(answer: dict[str, Any] | None) -> str:
    """Why a service's answer is not healthy ('' when it is)."""
    if answer is None:
        return "no replica answered over NATS within 2 s"
    if answer.get("status") == "ok":
        return ""
    return "; ".join([*(["its database does not answer"] if not answer.get("database", True) else []),
                      *map(str, answer.get("problems", []))]) or str(answer.get("status"))


async def _check(settings: Settings, names: list[str]) -> dict[str, str]:
    """Service → why it is not healthy ('' when it is). Bounded: NATS that does not answer is a reason, not a
    hang (with ``max_reconnect_attempts=0``, nats-py retried a refused first connect for ever)."""
    results: dict[str, str] = {}
    backend = [n for n in names if n != "gateway"]
    if backend:
        try:
            async with asyncio.timeout(NATS_CONNECT_SECONDS * len(settings.nats_servers) + 1):
                nc = await nats.connect(settings.nats_servers, connect_timeout=NATS_CONNECT_SECONDS,
                                         max_reconnect_attempts=1, error_cb=_quiet,
                                         **natsauth.connect_options(settings, natsauth.ADMIN))
        except Exception as exc:
            reason = f"NATS at {settings.nats_url} did not answer ({str(exc) or type(exc).__name__})"
            return {name: reason for name in backend} | ({"gateway": _gateway_why(settings)} if "gateway" in names
                                                          else {})
        try:
            answers = await asyncio.gather(*(ping(nc, name) for name in backend))
        finally:
            await nc.close()
        results = {name: _why(answer) for name, answer in zip(backend, answers, strict=True)}
    if "gateway" in names:
        results["gateway"] = _gateway_why(settings)
    return results


def _gateway_why(settings: Settings) -> str:
    return "" if gateway_healthy(settings) else f"GET /healthz on port {settings.gateway_port} did not answer 200"


def check_services(settings: Settings, names: list[str], quiet: bool = False) -> bool:
    """True when every named service answers healthy; prints one line per service, with the reason when it is
    not, unless ``quiet``."""
    results = asyncio.run(_check(settings, names))
    if not quiet:
        for name in names:
            why = results.get(name, "not asked")
            print(f"{name}: ok" if not why else f"{name}: NOT HEALTHY ({why})")
    return not any(results.get(name, "not asked") for name in names)
