"""The runtime every backend service stands on: broker, database, outbox, health, metrics, lifecycle.

A service's ``app.py`` builds a :class:`Service` and registers handlers with :meth:`Service.handle`;
``python -m services.<name>`` runs it until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats.js.errors
from faststream import FastStream
from faststream.exceptions import NackMessage, RejectMessage
from faststream.nats import JStream, NatsMessage
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from cartwheel import natsauth, subjects, tracing
from cartwheel.bus import ConnectionLog, declare_topology, make_broker
from cartwheel.contracts.base import Message
from cartwheel.db import Database, migrate
from cartwheel.heap import HeapSettler, freeze_startup_heap
from cartwheel.observability import (
    CollectorPauses,
    ServiceMetrics,
    bind_ids,
    configure_logging,
    message_id,
    start_ops_server,
    unbind_ids,
)
from cartwheel.outbox import OutboxRelay, has_unpublished
from cartwheel.readiness import Readiness
from cartwheel.requests import RequestServer
from cartwheel.settings import Settings, get_settings
from cartwheel.tenants import context as tenant_context
from cartwheel.tenants.databases import TenantDatabases, UnknownTenant
from cartwheel.tenants.mirror import Directory
from cartwheel.tenants.rounds import TenantRounds

HANDLER_CONCURRENCY = 64
OUTBOX_UPKEEP_FIRST_S = 5.0  # after start, every tenant's outbox is looked at (quiet ones 4 a second) ...
LET_GO_EVERY_S = 1.0  # how soon a tenant being deleted is let go of (cartwheel/tenants/cli.py waits for it)
OUTBOX_UPKEEP_S = 60.0  # ... and again this often, busy or not (a quiet tenant: as often as TenantRounds allows)
REDELIVER_S = 2.0  # an event whose handler failed comes back after this long (a dependency may be back) ...
REDELIVER_MAX_S = 300.0  # ... doubling with each failure up to this: a poison event costs little, and is never lost
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[M], Awaitable[Any]]


def redelivery_delay(deliveries: int) -> float:
    """Seconds before an event whose handler failed on its ``deliveries``-th delivery comes back."""
    return min(REDELIVER_S * 2 ** min(max(deliveries - 1, 0), 16), REDELIVER_MAX_S)


class Service:
    def __init__(self, name: str, settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or get_settings()
        tenant_context.set_own(self.settings.tenant)  # what a message left without a tenant says outside any work
        self.log = logging.getLogger(f"cartwheel.{name}")
        self.registry = CollectorRegistry()
        self.metrics = ServiceMetrics(name, self.registry)
        self.connection_log = ConnectionLog(name, reconnected=self.metrics.nats_reconnects.inc)
        self.broker = make_broker(self.settings, name, self.registry, self.connection_log)
        self.db = TenantDatabases(name, self.settings, on_open=self._opened, on_close=self._closing,
                                  on_closed=self._closed,
                                  gone=lambda tenant: self.tenants.gone(tenant))
        """The current tenant's database (``self.db.run(...)``), each tenant's by ``self.db.of(tenant)``."""
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self.relay: OutboxRelay | None = None  # the installation's own tenant's
        self.relays: dict[str, OutboxRelay] = {}  # every open tenant database's, that one too
        self._loop: asyncio.AbstractEventLoop | None = None
        self.heap: HeapSettler | None = None
        """A process of its own (:func:`main`): freezes tenants' databases once opened (:mod:`cartwheel.heap`)."""
        self._upkeep: asyncio.Task[None] | None = None
        self._letting_go: asyncio.Task[None] | None = None
        self._stopping_relays: set[asyncio.Task[None]] = set()
        self.event_consumers: dict[str, str] = {}  # durable -> subject, as subjects.EVENT_CONSUMERS lists them
        self.readiness = Readiness(self)
        self.tenants = Directory(self.settings, lambda: self.broker.connection)
        """The registered tenants (the registry's mirror), watched from start to stop."""
        pool = self.db.own.engine.pool
        self.metrics.pool_size.set(getattr(pool, "size", lambda: 1)() + max(getattr(pool, "_max_overflow", 0), 0))
        self.app = FastStream(
            self.broker,
            logger=self.log,
            on_startup=[self._startup],
            after_startup=[self._after_startup],
            on_shutdown=[self._before_broker_stops],
            after_shutdown=[self._close],
        )
        self.requests = RequestServer(name, self.registry, concurrency=HANDLER_CONCURRENCY, log=self.log)
        self.requests.add(subjects.health(name), None, self._health, envelope=False, shared=False)  # every replica

    @property
    def js(self) -> JetStreamContext:
        return self.broker.connection.jetstream()

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run ``hook`` once connected and declared, before handlers receive messages."""
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run ``hook`` at shutdown, while the connection is still up (in reverse order of registration)."""
        self._on_stop.append(hook)
        return hook

    def handle(self, subject: str, model: type[M]) -> Callable[[Handler[M]], Handler[M]]:
        """Answer requests on ``subject`` (queue group = service): parse into ``model``, reply in the envelope.

        Served by the lean :class:`~cartwheel.requests.RequestServer`, many requests at once.
        """

        def register(fn: Handler[M]) -> Handler[M]:
            self.requests.add(subject, model, fn)
            return fn

        return register

    def consume(self, subject: str, model: type[M], durable: str, *, workers: int = 1, in_flight: int | None = None,
                ack_wait: float | None = None, from_now: bool = False) -> Callable[[Handler[M]], Handler[M]]:
        """Handle events on ``subject`` from the EVENTS stream, at least once, shared by the service's replicas.

        A durable consumer remembers its place across restarts; a handler that raises gets the
        event again, 2 s later and then with a doubling wait up to 5 minutes, until it succeeds:
        an event is never dropped because a dependency was down. Only an event that does not
        parse (it can never succeed) is terminated, with an error in the log and the failure
        counted. A consumer created later starts from the oldest event the stream still
        holds, so a service added to a running shop catches up; with ``from_now``, from the events
        published after it is made (a mailer added to a running shop does not mail the stream's month of
        history). Handlers must tolerate repeats (compare versions, or use ``first_delivery``).
        ``workers``: events handled at once by each replica; ``in_flight``: events delivered and not yet
        acknowledged, all replicas together (the server's default, 1,000, if None); the rest wait in the stream.
        ``ack_wait``: seconds a delivered event may take before the server delivers it again (its default, 30 s,
        if None).
        """

        def register(fn: Handler[M]) -> Handler[M]:
            async def endpoint(msg: NatsMessage) -> None:
                try:
                    event = model.model_validate_json(msg.body)
                except ValidationError as exc:
                    self.metrics.failures.labels(self.name, subject).inc()
                    where = msg.raw_message.subject
                    self.log.error("event on %s for %s does not parse, dropped: %s", where, durable, exc)
                    raise RejectMessage() from None
                token = message_id.set(event.id if isinstance(event, Message) else "-")
                if (msg.raw_message.metadata.num_delivered or 1) > 1:
                    self.metrics.redeliveries.labels(self.name, durable).inc()
                ids = bind_ids(event)
                tenant = tenant_context.enter(getattr(event, "tenant", None))  # its database, its cache keys
                parent = tracing.extract(msg.headers)  # as the outbox relay sent it
                try:
                    with tracing.span(f"{durable} {subject}", parent=parent, kind=tracing.CONSUMER):
                        try:
                            await fn(event)
                            self.log.debug("event on %s handled by %s", subject, durable)
                        except NackMessage:
                            raise
                        except Exception as failure:
                            gone = self.tenants.mirror.synced and not self.tenants.registered(event.tenant)
                            if isinstance(failure, UnknownTenant) and gone:
                                self.log.warning("event on %s for %s: tenant %s is deleted; dropped", subject,
                                                 durable, event.tenant)
                                return  # acknowledged: it can never be handled (a registered tenant's comes back)
                            # FastStream's default would terminate the event: it would never come back.
                            self.metrics.failures.labels(self.name, subject).inc()
                            deliveries = msg.raw_message.metadata.num_delivered or 1
                            delay = redelivery_delay(deliveries)
                            self.log.exception("event handler %s failed (delivery %d); it comes back in %g s",
                                               durable, deliveries, delay)
                            raise NackMessage(delay=delay) from None
                finally:
                    tenant_context.leave(tenant)
                    unbind_ids(ids)
                    message_id.reset(token)

            endpoint.__name__ = fn.__name__
            self.event_consumers[durable] = subject
            self.broker.subscriber(
                subject,
                queue=durable,  # nats-py makes the queue name the durable consumer's name and deliver group
                config=event_consumer(self.name, durable, in_flight, ack_wait, from_now=from_now),
                stream=JStream(subjects.EVENTS_STREAM, declare=False),  # declared by declare_topology
                **({"max_workers": workers} if workers > 1 else {}),
            )(endpoint)
            return fn

        return register

    async def _health(self, _body: bytes) -> dict[str, Any]:
        problems = self.readiness.now()
        answer = {"service": self.name, "instance": self.instance, "status": "degraded" if problems else "ok",
                  "database": not any(p.startswith("database") for p in problems)}
        return answer | ({"problems": problems} if problems else {})

    def outbox_relay(self, tenant: str | None = None) -> OutboxRelay | None:
        """The outbox relay of ``tenant``'s database (by default the current tenant's); None while it has none."""
        return self.relays.get(tenant or tenant_context.current(self.db.own_name))

    def notify_outbox(self) -> None:
        """Wake the outbox relay of the current tenant's database after a transaction that recorded events."""
        if relay := self.outbox_relay():
            relay.notify()

    def outbox_committed(self, events: Sequence[tuple[Message, str | None]]) -> None:
        """Hand ``events``, just committed to the current tenant's outbox (with their traces), to its relay."""
        if relay := self.outbox_relay():
            relay.committed([e for e, _ in events], [t for _, t in events])

    def _relay(self, db: Database) -> OutboxRelay:
        return OutboxRelay(db, self.js, on_failure=self.metrics.outbox_failures.inc)

    def _opened(self, tenant: str, db: Database) -> None:
        """Another tenant's database opened: its outbox gets a relay (events it recorded before go out now)."""
        if self._loop is None:
            return
        if self.heap is not None:
            self.heap.opened()
        if tenant in self.relays:
            return
        relay = self.relays[tenant] = self._relay(db)
        self._loop.call_soon_threadsafe(relay.start)

    def _closing(self, tenant: str, db: Database) -> None:
        relay, loop = self.relays.pop(tenant, None), self._loop
        if relay is not None and loop is not None:  # it sends what is pending one last time, then ends
            loop.call_soon_threadsafe(self._stop_relay, relay)

    def _closed(self) -> None:
        """Tenants' databases closed (a while after :meth:`_closing`): what they left frozen can be freed."""
        if self.heap is not None:
            self.heap.closed()

    def _stop_relay(self, relay: OutboxRelay) -> None:
        task = asyncio.get_running_loop().create_task(relay.stop())
        self._stopping_relays.add(task)  # held until done: a task nobody holds may be collected mid-way
        task.add_done_callback(self._stopping_relays.discard)

    async def _startup(self) -> None:
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, migrate, self.name, self.db.url)
        await self.broker.connect()
        await declare_topology(self.js, self.settings, update=False)  # bringing streams up to date is admin's
        await self._move_event_consumers()
        self.tenants.mirror.start()
        self.relay = self.relays[self.db.own_name] = self._relay(self.db.own)
        for hook in self._on_start:
            await hook()
        self.log.info("migrated and connected in %.2f s", time.monotonic() - started)

    async def _move_event_consumers(self) -> None:
        """Bring a durable made by an older version to the deliver subject this one subscribes to (the server
        keeps a consumer's config, and nats-py subscribes where it says), keeping its place in the stream."""
        for durable in self.event_consumers:
            wanted = event_consumer(self.name, durable).deliver_subject
            try:
                config = (await self.js.consumer_info(subjects.EVENTS_STREAM, durable)).config
            except nats.js.errors.NotFoundError:
                continue
            if config.deliver_subject != wanted:
                self.log.info("event consumer %s now delivers to %s (was %s)", durable, wanted, config.deliver_subject)
                config.deliver_subject = wanted
                await self.js.add_consumer(subjects.EVENTS_STREAM, config=config)

    async def _after_startup(self) -> None:
        assert self.relay is not None
        await self.readiness.check()  # the first health answer already tells the truth
        await self.requests.start(self.broker.connection)
        # The server has every subscription once this returns: a request sent right after start finds us.
        await self.broker.connection.flush(timeout=5)
        self._loop = asyncio.get_running_loop()
        for relay in self.relays.values():
            relay.start()
        for tenant, db in self.db.all_open()[1:]:  # opened while starting (a hook's work)
            self._opened(tenant, db)
        self.readiness.start()
        rounds = self.every_tenant("outbox upkeep", self._outbox_round)
        self._upkeep = asyncio.create_task(rounds.run_forever(first_wait=OUTBOX_UPKEEP_FIRST_S), name="outbox-upkeep")
        self._letting_go = asyncio.create_task(self._let_go_of_deleted(), name="tenants-let-go")
        start_ops_server(self.settings.metrics_port, self.registry, self.readiness.alive, self.settings.metrics_host,
                         ready=self.readiness.now)
        self.log.info("%s ready (instance %s)", self.name, self.instance)

    def every_tenant(self, what: str, work: Callable[[], Awaitable[float]]) -> TenantRounds:
        """Upkeep for each tenant in turn, in its context: ``work()`` returns the seconds until its next round
        (see :class:`~cartwheel.tenants.rounds.TenantRounds`); run it with ``rounds.run_forever()``."""
        return TenantRounds(what, self.db, self.tenants.upkept, work)

    async def _outbox_round(self) -> float:
        """Publish what a tenant's outbox still holds when no relay of this process is at it (a quiet tenant after
        a crash, or whose last relay could not reach NATS before its database closed)."""
        tenant = tenant_context.current(self.db.own_name)
        if tenant in self.relays:  # open: its relay is at it
            return OUTBOX_UPKEEP_S
        if await self.db.read_closed(tenant, has_unpublished) is False:
            return OUTBOX_UPKEEP_S  # nothing waits: its database stays closed
        db = self.db.current()  # opened now: its relay starts (on the loop, after this round) ...
        pending, _ = await db.read(OutboxRelay.backlog)
        relay = self.relays.get(tenant)
        if pending and relay is not None:  # ... and is told at once
            self.log.info("tenant %s: %d events left in its outbox; publishing them", tenant, pending)
            relay.notify()
        return OUTBOX_UPKEEP_S

    async def _let_go_of_deleted(self) -> None:
        """A tenant being deleted (or no longer registered) loses this process's hold on its databases within
        :data:`LET_GO_EVERY_S`: ``cartwheel tenants delete`` waits that long before it drops them."""
        while True:
            await asyncio.sleep(LET_GO_EVERY_S)
            for tenant, _ in self.db.all_open()[1:]:
                if self.tenants.gone(tenant) and self.db.let_go(tenant):
                    self.log.info("tenant %s is being deleted: its database is closed here", tenant)

    async def _before_broker_stops(self) -> None:
        for task in (self._upkeep, self._letting_go):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.tenants.mirror.stop()
        await self.readiness.stop()
        self.connection_log.closing = True
        await self.requests.stop()  # no new requests; those in flight are answered while everything is up
        for hook in reversed(self._on_stop):
            try:
                await hook()
            except Exception:
                self.log.exception("stop hook %s failed", getattr(hook, "__qualname__", hook))
        # Before the broker drains: events recorded after this go out at the next start.
        self._loop = None  # no new relays
        if self.heap is not None:
            self.heap.stop()
        for relay in list(self.relays.values()):
            await relay.stop()
        if self._stopping_relays:
            await asyncio.wait(list(self._stopping_relays))

    async def _close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)
        self.log.info("%s stopped", self.name)


def event_consumer(service: str, durable: str, in_flight: int | None = None,
                   ack_wait: float | None = None, *, from_now: bool = False) -> ConsumerConfig:
    """The EVENTS consumer every replica of a service asks for: the same config from each (its deliver subject
    too), so replicas starting together get one consumer instead of racing to create it."""
    return ConsumerConfig(name=durable,  # named: nats-py then asks with the filter in the subject, which the bus checks
                          filter_subjects=[], deliver_policy=DeliverPolicy.NEW if from_now else DeliverPolicy.ALL,
                          max_ack_pending=in_flight,
                          ack_wait=ack_wait,
                          deliver_subject=subjects.event_delivery(natsauth.inbox_prefix(service), durable))


def main(name: str) -> int:
    """Entry point of ``python -m services.<name>`` and ``cartwheel run <name>``."""
    settings = get_settings()
    configure_logging(name, settings.log_level, settings.log_format)
    tracing.configure_tracing(name, settings.otel_exporter)
    service: Service = importlib.import_module(f"services.{name}.app").build(settings)

    @service.app.after_startup
    async def freeze() -> None:  # a process of its own (not a test's thread): what it started with stays for life
        service.log.info("%d startup objects frozen out of the collector's full runs", freeze_startup_heap())
        service.heap = HeapSettler(asyncio.get_running_loop())
        pauses = CollectorPauses(name)
        service.registry.register(pauses)
        pauses.install()

    asyncio.run(service.app.run())
    return 0
