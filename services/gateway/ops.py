"""Operations routes: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Response, current_app, jsonify

from cartwheel import subjects
from cartwheel.errors import ServiceUnavailable
from services.gateway.api import Routes
from services.gateway.auth import require_admin
from services.gateway.context import gateway
from services.gateway.errors import error_response
from services.gateway.openapi import build_spec
from services.gateway.schemas import Health, Readiness, ServiceStatus

routes = Routes(tag="operations")

PROBED_SERVICES = ("catalog",)
PROBE_TIMEOUT = 0.5
READY_RETRY_AFTER = "5"


@routes.get("/healthz", summary="The process is alive", response=Health)
def healthz() -> Health:
    return Health()


@routes.get(
    "/readyz",
    summary="Ready when connected to NATS; reports each service's health answer",
    response=Readiness,
    errors=(503,),
)
def readyz() -> Response | Readiness:
    ctx = gateway()
    worker = {"pid": os.getpid(), "loop": ctx.bus.loop_kind}
    if not ctx.bus.connected:
        return error_response(
            503,
            "service_unavailable",
            "not connected to NATS yet",
            headers={"Retry-After": READY_RETRY_AFTER},
            details={"nats": "disconnected", "worker": worker},
        )
    services = {name: _probe(name) for name in PROBED_SERVICES}
    return Readiness(worker=worker, services=services)


@routes.get(
    "/metrics",
    summary="Prometheus metrics, for the admin token (or without one on the gateway's metrics port, 9100)",
    media_type="text/plain",
    errors=(401, 429),
)
def metrics() -> Response:
    require_admin()  # counts and routes tell a stranger how the shop is doing
    return current_app.extensions["cartwheel.metrics"].render()


@routes.get("/openapi.json", summary="This API's OpenAPI 3.1 description (the admin token's if not public)",
            errors=(401, 429))
def openapi() -> Response:
    if not gateway().settings.public_openapi:
        require_admin()
    spec = current_app.extensions.get("cartwheel.openapi")
    if spec is None:
        spec = current_app.extensions["cartwheel.openapi"] = build_spec(gateway().operations)
    return jsonify(spec)


def _probe(service: str) -> ServiceStatus:
    """Ask one replica of ``service`` how it is (as ``cartwheel health`` does); info only."""
    try:
        raw = gateway().bus.ping(subjects.health(service), b"", PROBE_TIMEOUT)
    except ServiceUnavailable as error:
        return ServiceStatus(status="unavailable", reason=error.reason)
    answer = _decode(raw)
    healthy = not isinstance(answer, dict) or answer.get("status", "ok") == "ok"
    return ServiceStatus(status="ok" if healthy else "degraded", answer=answer)


def _decode(raw: bytes) -> Any:
    """The service's answer as it gave it: JSON, else text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]
