"""The hot path: request subjects answered by plain nats-py subscriptions, one envelope, pydantic-core parsing.

FastStream's per-message machinery (middlewares, dependency injection, its own parser) cost about
0.4 ms of CPU per request here, more than most handlers; a request needs none of it (no acks, no
retries: the caller times out and asks again). So every ``Service.handle`` subject is one queue
subscription whose callback starts a task per message, at most ``concurrency`` at once per subject
(beyond that, messages wait in the subscription's buffer). FastStream keeps the JetStream event
consumers, where its acks, redelivery and durable consumers earn their cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pydantic_core
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError

from cartwheel import tracing
from cartwheel.contracts.base import Reply
from cartwheel.db import unavailable
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.observability import bind_ids, message_id, unbind_ids
from cartwheel.tenants import context as tenant_context

Handler = Callable[[Any], Awaitable[Any]]

# Buckets for answers that take from a fraction of a millisecond (a cache read) to a checkout's seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]} for err in exc.errors()]


def _json(data: Any) -> bytes:
    return pydantic_core.to_json(data, fallback=str)  # a value JSON has no type for (a Decimal, say) as its text


def success(data: Any) -> bytes:
    return _json({"ok": True, "data": data})


def failure(code: str, message: str, **details: Any) -> bytes:
    return Reply.failure(code, message, **details).model_dump_json().encode()


class RequestMetrics:
    """Requests answered, by subject and outcome (``ok``, a refusal's code, ``failed``), and how long each took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answered = Counter("cartwheel_requests", "Requests answered, by subject and outcome",
                                ["service", "subject", "outcome"], registry=registry)
        self.seconds = Histogram("cartwheel_request_duration_seconds", "Time from a request's arrival to its answer",
                                 ["service", "subject"], buckets=LATENCY_BUCKETS, registry=registry)


@dataclass
class _Route:
    subject: str
    parse: Callable[[bytes], Any]
    handler: Handler
    envelope: bool = True
    shared: bool = True
    gate: asyncio.Semaphore | None = None
    subscription: Subscription | None = None


class RequestServer:
    """Serves a service's request subjects on a nats-py connection (queue group = the service's name)."""

    def __init__(self, service: str, registry: CollectorRegistry, *, concurrency: int = 64,
                 log: logging.Logger | None = None) -> None:
        self.service = service
        self.concurrency = concurrency
        self.metrics = RequestMetrics(registry)
        self.log = log or logging.getLogger(f"cartwheel.{service}")
        self._routes: list[_Route] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, subject: str, model: type[BaseModel] | None, handler: Handler, *, envelope: bool = True,
            shared: bool = True) -> None:
        """Answer ``subject``: its body parsed into ``model`` (or handed over as bytes when None), the handler's
        result in the reply envelope (or, ``envelope=False``, as JSON on its own: health answers).
        ``shared``: one replica answers each request (the service's queue group); else every replica does."""
        parse = model.model_validate_json if model is not None else bytes
        self._routes.append(_Route(subject, parse, handler, envelope, shared))

    @property
    def subjects(self) -> list[str]:
        return [route.subject for route in self._routes]

    async def start(self, nc: NatsClient) -> None:
        for route in self._routes:
            route.gate = asyncio.Semaphore(self.concurrency)
            queue = self.service if route.shared else ""
            route.subscription = await nc.subscribe(route.subject, queue=queue, cb=self._receiver(nc, route))

    async def stop(self, grace: float = 5.0) -> None:
        """Take no new requests, then give those in flight up to ``grace`` seconds to be answered."""
        for route in self._routes:
            if route.subscription is not None:
                with contextlib.suppress(Exception):
                    await route.subscription.unsubscribe()
                route.subscription = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    def _receiver(self, nc: NatsClient, route: _Route) -> Callable[[Msg], Awaitable[None]]:
        gate = route.gate
        assert gate is not None
        tasks = self._tasks

        async def receive(msg: Msg) -> None:
            await gate.acquire()  # the subscription's buffer holds the rest meanwhile
            task = asyncio.create_task(self._serve(nc, route, msg))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), gate.release()))

        return receive

    async def _serve(self, nc: NatsClient, route: _Route, msg: Msg) -> None:
        began = time.perf_counter()
        parent = tracing.extract(msg.headers)
        if parent is None and not (tracing.enabled and route.shared):  # untraced, or a health probe: no span
            answer, outcome = await self.answer(route, msg.data)
        else:
            with tracing.span(route.subject, parent=parent, kind=tracing.SERVER) as span:
                answer, outcome = await self.answer(route, msg.data)
                if outcome != "ok" and span.is_recording():
                    span.set_attribute("cartwheel.outcome", outcome)
        if msg.reply:
            try:
                await nc.publish(msg.reply, answer)
            except Exception as exc:  # the connection went away: the caller times out and may ask again
                self.log.warning("reply on %s not sent: %s", route.subject, exc)
        self.metrics.answered.labels(self.service, route.subject, outcome).inc()
        self.metrics.seconds.labels(self.service, route.subject).observe(time.perf_counter() - began)

    async def answer(self, route: _Route, body: bytes) -> tuple[bytes, str]:
        """The reply envelope for ``body`` and the outcome to count: never raises."""
        token = message_id.set("-")
        ids: list[Any] = []
        tenant = None
        try:
            try:
                request = route.parse(body)
            except ValidationError as exc:
                return failure("validation_failed", "invalid request", fields=validation_details(exc)), \
                    "validation_failed"
            message_id.set(getattr(request, "id", None) or "-")
            ids = bind_ids(request)
            tenant = tenant_context.enter(getattr(request, "tenant", None))  # its database, its cache keys
            data = await route.handler(request)
            return (success(data) if route.envelope else _json(data)), "ok"
        except DomainError as exc:
            return failure(exc.code, exc.message, **exc.details), exc.code
        except ServiceUnavailable as exc:  # a service this one asked did not answer: the caller may retry
            return failure("service_unavailable", f"{exc.subject}: {exc.reason}"), "service_unavailable"
        except Exception as exc:
            if unavailable(exc):  # its database is down or restarting: the caller may retry (before: 500)
                self.log.warning("handler for %s: the database is unavailable (%s)", route.subject,
                                 str(exc).splitlines()[0][:200])
                return failure("service_unavailable", f"{self.service}: its database is unavailable"), \
                    "service_unavailable"
            self.log.exception("handler for %s failed", route.subject)
            return failure("internal_error", f"{self.service} could not handle the request"), "failed"
        finally:
            if tenant is not None:
                tenant_context.leave(tenant)
            unbind_ids(ids)
            message_id.reset(token)
