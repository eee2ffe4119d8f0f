"""`cartwheel health`: ask services whether they are up (over NATS; the gateway over HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.error
import urllib.request
from typing import Any

import nats

from cartwheel import natsauth, subjects
from cartwheel.settings import Settings

REPLICAS_QUIET_S = 0.3  # every replica has answered once none has for this long after the first


async def ping_all(nc: nats.NATS, service: str, timeout: float = 2.0, expect: int = 0) -> list[dict[str, Any]]:
    """Every replica's health answer (each subscribes to the health subject without a queue group): those
    that came within ``timeout``, ending early once ``expect`` have, or none has for a moment after the first."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    answers: list[dict[str, Any]] = []
    try:
        await nc.publish(subjects.health(service), b"", reply=inbox)
        deadline = asyncio.get_running_loop().time() + timeout
        while not expect or len(answers) < expect:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=min(left, REPLICAS_QUIET_S) if answers and not expect else left)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            with contextlib.suppress(ValueError):
                answers.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return answers


def http_status(url: str, timeout: float = 2.0) -> int | str:
    """The HTTP status of a GET of ``url``, or why there is none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return str(getattr(exc, "reason", exc))


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _gateway_why(settings: Settings, timeout: float = 2.0) -> str:
    """Why the gateway is not ready ('' when it is): ``/readyz`` (``/healthz`` said 200 without NATS)."""
    status = http_status(f"http://{_loopback(settings.gateway_host)}:{settings.gateway_port}/readyz", timeout)
    return "" if status == 200 else f"GET /readyz on port {settings.gateway_port} answered {status}"


PORTS_FILE = "ports.json"
"""Written by ``cartwheel up`` into the var dir: each child's metrics port, for ``cartwheel health --local``."""


def local_ports(settings: Settings) -> dict[str, list[int]]:
    """Service → the metrics ports of its replicas on this machine: those ``cartwheel up`` wrote down while it
    runs, else the one port of the settings (a container runs one)."""
    try:
        written = json.loads((settings.var_dir / PORTS_FILE).read_text())
        os.kill(int(written["pid"]), 0)  # the supervisor that wrote it is still running
        return {name: list(ports) for name, ports in written["metrics"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def check_local(settings: Settings, names: list[str]) -> bool:
    """This machine's instances only (each one's own ``/readyz``), so one sick replica of several is seen as sick."""
    ports = local_ports(settings)
    healthy = True
    for name in names:
        if name == "gateway":
            why = _gateway_why(settings)
        else:
            host = _loopback(settings.metrics_host)
            statuses = {port: http_status(f"http://{host}:{port}/readyz") for port in
                        ports.get(name) or [settings.metrics_port]}
            why = "; ".join(f"GET /readyz on port {port} answered {status}" for port, status in statuses.items()
                            if status != 200)
        healthy &= not why
        print(f"{name} (this machine): ok" if not why else f"{name} (this machine): NOT HEALTHY ({why})")
    return healthy


NATS_CONNECT_SECONDS = 2.0


async def _quiet(_error: Exception) -> None:
    """nats-py's default error callback logs a traceback per failed attempt: the reason is printed once instead."""


def _why(answers: list[dict[str, Any]], expect: int = 0) -> str:
    """Why a service is not healthy ('' when it is): no answer, fewer replicas than expected, or what each sick
    replica says is wrong."""
    if not answers:
        return "no replica answered over NATS within 2 s"
    sick = [f"{answer.get('instance', '?')}: {_replica_why(answer)}" for answer in answers
            if answer.get("status") != "ok"]
    if expect and len(answers) < expect:
        sick.append(f"{len(answers)} of {expect} replicas answered")
    return "; ".join(sick)


def _replica_why(answer: dict[str, Any]) -> str:
    return "; ".join([*(["its database does not answer"] if not answer.get("database", True) else []),
                      *map(str, answer.get("problems", []))]) or str(answer.get("status"))


async def _check(settings: Settings, names: list[str], expect: dict[str, int] | None = None
                 ) -> dict[str, tuple[str, int]]:
    """Service → (why it is not healthy, '' when it is; how many replicas answered). Bounded: NATS that does not
    answer is a reason, not a hang (with ``max_reconnect_attempts=0``, nats-py retried a refused first connect
    for ever)."""
    expect = expect or {}
    results: dict[str, tuple[str, int]] = {}
    backend = [n for n in names if n != "gateway"]
    if backend:
        try:
            async with asyncio.timeout(NATS_CONNECT_SECONDS * len(settings.nats_servers) + 1):
                nc = await nats.connect(settings.nats_servers, connect_timeout=NATS_CONNECT_SECONDS,
                                         max_reconnect_attempts=1, error_cb=_quiet,
                                         **natsauth.connect_options(settings, natsauth.ADMIN))
        except Exception as exc:
            reason = f"NATS at {settings.nats_url} did not answer ({str(exc) or type(exc).__name__})"
            results = {name: (reason, 0) for name in backend}
        else:
            try:
                answers = await asyncio.gather(*(ping_all(nc, name, expect=expect.get(name, 0)) for name in backend))
            finally:
                await nc.close()
            results = {name: (_why(found, expect.get(name, 0)), len(found))
                       for name, found in zip(backend, answers, strict=True)}
    if "gateway" in names:
        results["gateway"] = (_gateway_why(settings), 1)
    return results


def check_services(settings: Settings, names: list[str], quiet: bool = False,
                   expect: dict[str, int] | None = None) -> bool:
    """True when every replica of every named service answers healthy (and, for a service in ``expect``, that
    many of them); prints one line per service, with the reason when it is not, unless ``quiet``."""
    results = asyncio.run(_check(settings, names, expect))
    if not quiet:
        for name in names:
            why, replicas = results.get(name, ("not asked", 0))
            count = f" ({replicas} replicas)" if replicas > 1 else ""
            print(f"{name}: ok{count}" if not why else f"{name}: NOT HEALTHY ({why})")
    return not any(results.get(name, ("not asked", 0))[0] for name in names)
