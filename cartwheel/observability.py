"""Logging with service name and message id, Prometheus metrics, and the /metrics + /healthz endpoint."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

message_id: ContextVar[str] = ContextVar("message_id", default="-")


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.message_id = message_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": getattr(record, "service", "-"),
            "message_id": getattr(record, "message_id", "-"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(service)s [%(message_id)s] %(name)s: %(message)s"


def configure_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Root logging for one process; every line names the service and the message being handled."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per start says "migrated" instead


class ServiceMetrics:
    """Metrics of a service's event consumers beyond FastStream's own (requests: :mod:`cartwheel.requests`)."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.failures = Counter(
            "cartwheel_handler_failures",
            "Events whose handler raised, or that did not parse",
            ["service", "subject"],
            registry=registry,
        )
        self.service = service


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_ops_server(
    port: int, registry: CollectorRegistry, healthy: Callable[[], bool], host: str = "127.0.0.1"
) -> WSGIServer | None:
    """Serve ``/metrics`` and ``/healthz`` on ``port`` in a daemon thread; ``None`` when disabled or taken."""
    if not port:
        return None
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps({"status": "ok" if ok else "unhealthy"}).encode()]
        return metrics(environ, start_response)

    try:
        server = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        logging.getLogger(__name__).warning("metrics port %s unavailable (%s); metrics not served", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server
