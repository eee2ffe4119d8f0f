"""Logging with service name, message id, trace id (and the order and cart in hand), Prometheus metrics, and the
/metrics + /healthz endpoint."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from cartwheel.tracing import trace_id

ACCESS_LOGGER = "cartwheel.gateway.access"  # one JSON line per HTTP request (services/gateway/access.py)
message_id: ContextVar[str] = ContextVar("message_id", default="-")
order_id: ContextVar[str | None] = ContextVar("order_id", default=None)
cart_id: ContextVar[str | None] = ContextVar("cart_id", default=None)


def bind_ids(source: object) -> list[tuple[ContextVar[str | None], Token[str | None]]]:
    """Log the ``order_id`` / ``cart_id`` that ``source`` (a request, an event) names; :func:`unbind_ids` undoes."""
    tokens = []
    for name in _id_fields(type(source)):
        value = getattr(source, name)
        if name == "order" and value is not None:  # an order's event carries the order (its ids) itself
            tokens += bind_ids(value)
        elif value is not None:
            var = order_id if name == "order_id" else cart_id
            tokens.append((var, var.set(str(value))))
    return tokens


_ID_FIELDS: dict[type, tuple[str, ...]] = {}


def _id_fields(kind: type) -> tuple[str, ...]:
    """Which of the names :func:`bind_ids` reads ``kind`` has (asking a pydantic model for a field it lacks raises
    inside: 2 µs each, on every request)."""
    found = _ID_FIELDS.get(kind)
    if found is None:
        fields = getattr(kind, "model_fields", None) or {}
        found = _ID_FIELDS[kind] = tuple(name for name in ("order", "order_id", "cart_id") if name in fields)
    return found


def unbind_ids(tokens: list[tuple[ContextVar[str | None], Token[str | None]]]) -> None:
    for var, token in reversed(tokens):
        var.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.message_id = message_id.get()
        record.trace_id = trace_id()
        order, cart = order_id.get(), cart_id.get()
        record.order_id, record.cart_id = order, cart
        record.ids = (f" order={order}" if order else "") + (f" cart={cart}" if cart else "")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": getattr(record, "service", "-"),
            "message_id": getattr(record, "message_id", "-"),
            "trace_id": getattr(record, "trace_id", "-"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in ("order_id", "cart_id"):
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return entry


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(service)s [%(message_id)s trace=%(trace_id)s%(ids)s] %(name)s: %(message)s"


class FieldsFormatter(JsonFormatter):
    """A line whose fields are the record's ``fields`` (``extra={"fields": {...}}``) beside ``ts``, ``service``,
    ``trace_id``...: the gateway's access log, JSON whatever ``log_format`` says."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self.fields(record)
        del entry["msg"]
        return json.dumps(entry | getattr(record, "fields", {}), separators=(",", ":"), default=str)


def configure_json_logger(name: str) -> None:
    """Lines of logger ``name`` as :class:`FieldsFormatter` JSON on stdout, with the context of every other line."""
    handler = logging.StreamHandler(sys.stdout)
    for kept in logging.getLogger().handlers[:1]:
        for context in kept.filters:
            handler.addFilter(context)
    handler.setFormatter(FieldsFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False


def configure_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Root logging for one process; every line names the service, the message being handled and its trace."""
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
