"""Logging with service name, message id, trace id (and the order and cart in hand), Prometheus metrics, and the
/metrics, /healthz and /readyz endpoint."""

from __future__ import annotations

import bisect
import gc
import itertools
import json
import logging
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    make_wsgi_app,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from cartwheel import __version__
from cartwheel.tenants import context as tenant_context
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
        order, cart, tenant = order_id.get(), cart_id.get(), tenant_context.serving_now()
        record.order_id, record.cart_id, record.tenant = order, cart, tenant
        record.ids = ((f" tenant={tenant}" if tenant else "") + (f" order={order}" if order else "")
                      + (f" cart={cart}" if cart else ""))
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
        for name in ("tenant", "order_id", "cart_id"):
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


class Trouble:
    """Logs a failure that repeats as a change of state, not a line per try: one line (with the traceback only
    when asked for) when it starts, one every ``every`` seconds with a count while it goes on, one when it ends.

    A nats-server restart had cart and inventory log a traceback four times a second (~20 MB an hour).
    """

    def __init__(self, log: logging.Logger, what: str, every: float = 60.0) -> None:
        self.log, self.what, self.every = log, what, every
        self.since: float | None = None  # monotonic start of the current spell of failures
        self._count = 0
        self._said_at = 0.0
        self._unsaid = 0

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, error: BaseException | str, *, traceback: bool = False, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        self._count += 1
        if self.since is None:
            self.since, self._said_at, self._unsaid = now, now, 0
            exc_info = error if traceback and isinstance(error, BaseException) else None
            self.log.log(level, "%s failed: %s", self.what, _reason(error), exc_info=exc_info)
        elif now - self._said_at >= self.every:
            self.log.log(level, "%s still failing after %.0f s (%d more failures since the last line): %s",
                         self.what, now - self.since, self._unsaid + 1, _reason(error))
            self._said_at, self._unsaid = now, 0
        else:
            self._unsaid += 1

    def ok(self) -> None:
        if self.since is not None:
            self.log.info("%s works again after %.1f s and %d failures", self.what, time.monotonic() - self.since,
                          self._count)
            self.since, self._count = None, 0


def _reason(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def add_process_metrics(registry: CollectorRegistry, service: str) -> None:
    """What the default registry has and a registry of one's own lacks: the process's CPU, memory, file
    descriptors and start time, the interpreter, the collector; and which build of Cartwheel this is."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    Gauge("cartwheel_build_info", "This process's build: always 1", ["service", "version", "python"],
          registry=registry).labels(service, __version__, platform.python_version()).set(1)


class ServiceMetrics:
    """A service's own metrics beyond FastStream's (requests: :mod:`cartwheel.requests`; lanes: their runtime)."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.service = service
        add_process_metrics(registry, service)
        labels = ["service"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=registry).labels(service)

        self.failures = Counter(
            "cartwheel_handler_failures",
            "Events whose handler raised, or that did not parse",
            ["service", "subject"],
            registry=registry,
        )
        self.ready = gauge("cartwheel_ready", "1 while the service is ready (see its /readyz), else 0")
        self.nats_connected = gauge("cartwheel_nats_connected", "1 while connected to NATS, else 0")
        self.nats_reconnects = Counter("cartwheel_nats_reconnects", "Reconnections to NATS after a lost connection",
                                       labels, registry=registry).labels(service)
        self.pool_checked_out = gauge("cartwheel_db_pool_checked_out", "Database connections in use")
        self.pool_size = gauge("cartwheel_db_pool_size", "Database connections the pool may open (size + overflow)")
        self.outbox_pending = gauge("cartwheel_outbox_pending", "Events recorded and not yet published")
        self.outbox_age = gauge("cartwheel_outbox_oldest_age_seconds",
                                "Age of the oldest event not yet published (0 when none)")
        self.outbox_failures = Counter("cartwheel_outbox_publish_failures", "Attempts to publish an event that "
                                       "failed (it stays, and goes out later in order)", labels, registry=registry
                                       ).labels(service)
        self.consumer_pending = Gauge("cartwheel_event_consumer_pending", "Events in the stream this consumer has "
                                      "not been given yet", ["service", "consumer"], registry=registry)
        self.consumer_unacked = Gauge("cartwheel_event_consumer_ack_pending", "Events given to this consumer and "
                                      "not yet acknowledged", ["service", "consumer"], registry=registry)
        self.redeliveries = Counter("cartwheel_event_consumer_redeliveries", "Events handled again: an earlier "
                                    "delivery failed or was not acknowledged in time", ["service", "consumer"],
                                    registry=registry)


class CollectorPauses(Collector):
    """``cartwheel_gc_pause_seconds``: the cyclic collector's runs, by generation (2: a full run), each a stop of the
    whole process. A process's own (the callbacks are the interpreter's): :meth:`install` it once, in ``main``.

    Counted in plain lists, exported by :meth:`collect`: a collection starts inside whatever allocation crosses the
    threshold, on any thread, maybe one holding a metric's lock (a scrape copying its children), which a
    ``Histogram.labels()`` here would wait for forever."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self, service: str) -> None:
        self.service = service
        self._counts = [[0] * (len(self.BUCKETS) + 1) for _ in range(3)]  # per generation, per bucket (+Inf last)
        self._sums = [0.0] * 3
        self._started = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._timed)

    def uninstall(self) -> None:
        gc.callbacks.remove(self._timed)

    def _timed(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = info["generation"]
        self._counts[generation][bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self._sums[generation] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("cartwheel_gc_pause_seconds", "The cyclic garbage collector's runs, by "
                                       "generation (2: a full run), each a stop of the whole process",
                                       labels=["service", "generation"])
        for generation, counts in enumerate(self._counts):
            cumulative = list(itertools.accumulate(counts))
            if cumulative[-1]:
                bounds = [floatToGoString(b) for b in self.BUCKETS] + ["+Inf"]
                family.add_metric([self.service, str(generation)], list(zip(bounds, cumulative, strict=True)),
                                  self._sums[generation])
        yield family


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_ops_server(
    port: int, registry: CollectorRegistry, healthy: Callable[[], bool], host: str = "127.0.0.1",
    ready: Callable[[], list[str]] | None = None,
) -> WSGIServer | None:
    """Serve ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (``ready`` lists what keeps it from serving) on
    ``port`` in a daemon thread; ``None`` when disabled or taken."""
    if not port:
        return None
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/healthz" or (path == "/readyz" and ready is None):
            ok = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps({"status": "ok" if ok else "unhealthy"}).encode()]
        if path == "/readyz" and ready is not None:
            problems = ready()
            start_response("503 Service Unavailable" if problems else "200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"status": "not ready", "problems": problems} if problems else {"status": "ok"}
                               ).encode()]
        return metrics(environ, start_response)

    try:
        server = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        logging.getLogger(__name__).warning("metrics port %s unavailable (%s); metrics not served", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server
