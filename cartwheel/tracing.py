"""Traces across the shop: W3C trace context in NATS headers; spans only when an exporter is configured.

Off (``CARTWHEEL_OTEL_EXPORTER=none``, the default) the OpenTelemetry SDK is not even imported and no span is
made: work that arrives with a ``traceparent`` runs under that context as it came (a non-recording span), so
its log lines carry the trace id and what it sends on carries the same ``traceparent``; the gateway gives a
request without one a fresh trace id. That costs a header lookup and a context switch per message, where
an SDK tracer that samples nothing still builds a span per hop. On, every hop is a span of the SDK's,
exported by OTLP, to the console or to a file (tests).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import INVALID_SPAN, Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
NO_TRACE = "-"

SERVER, CLIENT, CONSUMER, PRODUCER, INTERNAL = (SpanKind.SERVER, SpanKind.CLIENT, SpanKind.CONSUMER,
                                                SpanKind.PRODUCER, SpanKind.INTERNAL)


class _NatsHeaders(Getter[Mapping[str, str]], Setter[MutableMapping[str, str]]):
    """NATS headers as nats-py and FastStream hand them over: one string per name (or no headers at all)."""

    def get(self, carrier: Mapping[str, str] | None, key: str) -> list[str] | None:
        value = carrier.get(key) if carrier else None
        return [value] if value else None

    def keys(self, carrier: Mapping[str, str] | None) -> list[str]:
        return list(carrier) if carrier else []

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key] = value


HEADERS = _NatsHeaders()
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C only: no baggage on the bus
_tracer: trace.Tracer = trace.NoOpTracer()
enabled = False


def configure_tracing(service: str, exporter: str) -> None:
    """Make spans for ``service`` and send them to ``exporter`` (see ``Settings.otel_exporter``); ``none``: off."""
    global _tracer, enabled
    if exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.namespace": "cartwheel"}))
    if exporter == "otlp":  # OTLP over HTTP; OTEL_EXPORTER_OTLP_ENDPOINT and friends say where
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter.startswith("file:"):
        provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(exporter.removeprefix("file:"))))
    else:
        raise ValueError(f"unknown span exporter {exporter!r}")
    _tracer = provider.get_tracer("cartwheel")
    enabled = True


def disable_tracing() -> None:
    """Back to off (tests)."""
    global _tracer, enabled
    _tracer, enabled = trace.NoOpTracer(), False


class FileSpanExporter:
    """Each span as one JSON line appended to a file that every process of the shop may share (tests, local runs)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(span.to_json(indent=None) + "\n" for span in spans).encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, lines)  # one write of whole lines: processes appending at once don't interleave
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The context a message's ``traceparent`` carries; None when it carries none (the usual, cheap case)."""
    if not headers or TRACEPARENT not in headers:
        return None
    found = _PROPAGATOR.extract(headers, getter=HEADERS)
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def inject(headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """``headers`` with the current trace's ``traceparent`` added (a new dict when None); as given when no trace."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return headers
    headers = {} if headers is None else headers
    _PROPAGATOR.inject(headers, setter=HEADERS)
    return headers


def current_traceparent() -> str | None:
    """The current trace context as a ``traceparent`` value, to store beside work done later (outbox rows)."""
    return (inject({}) or {}).get(TRACEPARENT)


def trace_id() -> str:
    """The current trace id in hex (as log lines and the gateway's ``X-Trace-Id`` give it), or ``-``."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else NO_TRACE


def new_trace() -> Context:
    """A context of a fresh, unsampled trace (tracing off: the gateway's requests that came without one)."""
    span_context = SpanContext(random.getrandbits(128) or 1, random.getrandbits(64) or 1, is_remote=False,
                               trace_flags=TraceFlags(TraceFlags.DEFAULT))
    return trace.set_span_in_context(NonRecordingSpan(span_context), Context())


@contextlib.contextmanager
def span(name: str, *, parent: Context | None = None, kind: SpanKind = INTERNAL,
         attributes: Mapping[str, Any] | None = None, links: Sequence[Link] | None = None) -> Iterator[Span]:
    """A span named ``name`` (on) under ``parent`` (else the current context); off, just ``parent`` made current."""
    if enabled:
        with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes,
                                           links=links) as made:
            yield made
    elif parent is not None:
        token = otel_context.attach(parent)
        try:
            yield trace.get_current_span(parent)
        finally:
            otel_context.detach(token)
    else:
        yield INVALID_SPAN


def links_of(traceparents: Sequence[str | None], limit: int = 64) -> list[Link]:
    """Links to the contexts of ``traceparents`` (a batch's commands), at most ``limit``."""
    found: list[Link] = []
    for value in traceparents:
        if value and len(found) < limit and (ctx := extract({TRACEPARENT: value})) is not None:
            found.append(Link(trace.get_current_span(ctx).get_span_context()))
    return found


def context_of(traceparent: str | None) -> Context | None:
    return extract({TRACEPARENT: traceparent}) if traceparent else None


def begin(name: str, *, parent: Context | None, kind: SpanKind = SERVER,
          attributes: Mapping[str, Any] | None = None) -> tuple[Span, object]:
    """Start work that ends in another callback (an HTTP request's hooks): its span and the token for :func:`end`.
    Off, the span is ``parent``'s as it came, or a fresh unsampled trace's: a request always has a trace id."""
    if enabled:
        made = _tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        return made, otel_context.attach(trace.set_span_in_context(made, parent or Context()))
    current = parent or new_trace()
    return trace.get_current_span(current), otel_context.attach(current)


def end(made: Span, token: object) -> None:
    """End what :func:`begin` started (in the same context it began in)."""
    otel_context.detach(token)  # type: ignore[arg-type]
    made.end()
