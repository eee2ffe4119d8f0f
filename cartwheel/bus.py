"""The messaging platform: broker factory, stream and bucket declarations, request helper."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import nats
import nats.errors
import nats.js.errors
from faststream.nats import NatsBroker
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig, StreamInfo
from prometheus_client import CollectorRegistry

from cartwheel import natsauth, subjects, tracing
from cartwheel.contracts.base import Message, Reply
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.observability import Trouble
from cartwheel.settings import Settings

log = logging.getLogger(__name__)

DAY = 24 * 3600.0


class ConnectionLog:
    """nats-py's connection callbacks as a line when the connection is lost, a line a minute with a count
    while it stays lost, and a line when it is back. nats-py's own logged a full traceback at ERROR for every
    try (every 2 s): a 10-minute outage wrote 5 MB of them."""

    LOST = (OSError, TimeoutError, nats.errors.UnexpectedEOF, nats.errors.StaleConnectionError,
            nats.errors.NoServersError, nats.errors.ConnectionClosedError)
    """What nats-py reports while the connection is down; anything else (a permission refused, a slow consumer)
    is a problem of its own, and must not be folded into a spell that only a reconnect ends."""

    def __init__(self, service: str, reconnected: Callable[[], None] = lambda: None) -> None:
        self.log = logging.getLogger(f"cartwheel.{service}.bus")
        self.trouble = Trouble(self.log, "the connection to NATS")
        self._reconnected = reconnected
        self._said: dict[str, tuple[float, int]] = {}  # other errors by type: when last logged, how many since
        self.closing = False  # set when the process closes its connection: that is no trouble

    async def error(self, error: Exception) -> None:
        if self.closing:
            return
        if isinstance(error, self.LOST):
            self.trouble.failed(error)
            return
        kind, now = type(error).__name__, time.monotonic()
        said_at, unsaid = self._said.get(kind, (float("-inf"), 0))
        if now - said_at < 60:
            self._said[kind] = (said_at, unsaid + 1)
            return
        more = f" ({unsaid} more like it in the last minute)" if unsaid else ""
        self.log.warning("NATS reports %s: %s%s", kind, error, more)
        self._said[kind] = (now, 0)

    async def disconnected(self) -> None:
        if not self.closing:
            self.trouble.failed("disconnected; reconnecting")

    async def reconnected(self) -> None:
        self.trouble.ok()
        self._reconnected()

    def options(self) -> dict[str, Any]:
        return {"error_cb": self.error, "disconnected_cb": self.disconnected, "reconnected_cb": self.reconnected}


def make_broker(settings: Settings, service: str, registry: CollectorRegistry | None = None,
                connection: ConnectionLog | None = None) -> NatsBroker:
    """A FastStream broker for ``service``, with Prometheus metrics when a registry is given."""
    middlewares = [NatsPrometheusMiddleware(registry=registry, app_name=service)] if registry else []
    return NatsBroker(
        settings.nats_servers,
        name=f"cartwheel-{service}",
        middlewares=middlewares,
        **(connection or ConnectionLog(service)).options(),
        max_reconnect_attempts=-1,
        logger=logging.getLogger(f"cartwheel.{service}.bus"),
        log_level=logging.DEBUG,  # one line per message is too loud at INFO under load
        graceful_timeout=5.0,  # finish in-flight handlers on stop, within the 10 s a Ctrl-C allows
        **natsauth.broker_options(settings, service),
    )


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """Every stream Cartwheel owns. Declared by :func:`declare_topology`, never by FastStream."""
    return [
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_ALL],
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
            max_age=30 * DAY,
            duplicate_window=120.0,
        ),
    ]


def bucket_configs(settings: Settings) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(
            bucket=subjects.CATALOG_CACHE_BUCKET,
            description="Catalog read cache: product JSON by id, filled on miss, replaced on change.",
            history=1,
            ttl=DAY,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
        ),
        KeyValueConfig(
            bucket=subjects.INVENTORY_STOCK_BUCKET,
            description="Stock per product for reads: written by inventory after each change, newest version wins.",
            history=1,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
        ),
        KeyValueConfig(
            bucket=subjects.TENANTS_BUCKET,
            description="The tenant registry's mirror (cartwheel tenants): hosts, status and settings per tenant.",
            history=1,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
        ),
    ]


def object_store_configs(settings: Settings) -> list[ObjectStoreConfig]:
    return [
        ObjectStoreConfig(
            bucket=subjects.PRODUCT_IMAGES_BUCKET,
            description="Product images by product id and sha256, written by the gateway's admin upload.",
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
        ),
        ObjectStoreConfig(
            bucket=subjects.PRODUCT_FILES_BUCKET,
            description="Digital products' files by product id and sha256, written by the gateway's admin upload, "
            "read by buyers' download links.",
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
        ),
    ]


async def ensure_stream(js: JetStreamContext, config: StreamConfig, *, update: bool = True) -> None:
    """Create the stream, or bring an existing one to ``config`` (with ``update``; without, say that it differs);
    safe to call from every replica."""
    try:
        info = await stream_led(js, config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
            log.info("stream %s created", config.name)
            await stream_led(js, config.name)
            return
        except nats.js.errors.BadRequestError:
            info = await stream_led(js, config.name)  # another replica won the race
    wanted = replace(info.config, **{key: getattr(config, key) for key in _MANAGED})
    if any(getattr(info.config, key) != getattr(wanted, key) for key in _MANAGED):
        if not update:
            log.warning("stream %s differs from its declaration; `cartwheel migrate --streams` (as admin) updates it",
                        config.name)
            return
        await js.update_stream(wanted)
        log.info("stream %s updated", config.name)


# What Cartwheel decides about its streams; anything else an operator set is left alone.
_MANAGED = ("subjects", "num_replicas", "max_age", "duplicate_window", "description")


async def stream_led(js: JetStreamContext, stream: str, timeout: float = 15.0) -> StreamInfo:
    """The stream's info once it has a leader (or after ``timeout``, as it is). A replicated stream just made, or
    whose leader just went, elects one first and refuses writes until then ("no response from stream"): replicas
    that wrote at once crashed at start on a cluster."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise
        except (nats.errors.Error, TimeoutError):
            if loop.time() > deadline:
                raise
        else:
            if info.cluster is None or info.cluster.leader or loop.time() > deadline:
                return info
        await asyncio.sleep(0.1)


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await stream_led(js, f"KV_{config.bucket}")
    except nats.js.errors.NotFoundError:
        try:
            await js.create_key_value(config)
            log.info("bucket %s created", config.bucket)
        except nats.js.errors.BadRequestError:
            pass  # created meanwhile by another replica
        await stream_led(js, f"KV_{config.bucket}")


async def ensure_object_store(js: JetStreamContext, config: ObjectStoreConfig) -> None:
    try:
        await stream_led(js, f"OBJ_{config.bucket}")
    except nats.js.errors.NotFoundError:
        try:
            await js.create_object_store(config.bucket, config=config)  # the name positionally, see NATS-NOTES
            log.info("object store %s created", config.bucket)
        except nats.js.errors.BadRequestError:
            pass  # created meanwhile by another replica
        await stream_led(js, f"OBJ_{config.bucket}")


async def declare_topology(js: JetStreamContext, settings: Settings, *, update: bool = True) -> None:
    """Declare every stream and bucket, idempotently. Run by each service at start (``update=False``: a service
    may create what is missing, not change what exists), and by ``cartwheel up`` and ``cartwheel migrate
    --streams`` as admin, which bring existing streams up to date."""
    for stream in stream_configs(settings):
        await ensure_stream(js, stream, update=update)
    for bucket in bucket_configs(settings):
        await ensure_bucket(js, bucket)
    for store in object_store_configs(settings):
        await ensure_object_store(js, store)


async def declare_streams(settings: Settings) -> None:
    """Declare every stream and bucket and bring existing ones up to date, as admin (services may only create
    what is missing): ``cartwheel up`` at each start, ``cartwheel migrate --streams`` elsewhere."""
    nc = await nats.connect(settings.nats_servers, connect_timeout=5, max_reconnect_attempts=2,
                            **natsauth.connect_options(settings, natsauth.ADMIN))
    try:
        await declare_topology(nc.jetstream(), settings)
    finally:
        await nc.close()


async def request(nc: NatsClient, message: Message, timeout: float, subject: str | None = None,
                  headers: dict[str, str] | None = None) -> Any:
    """Send ``message`` to its subject and return the reply's data; raise what the reply says.

    ``headers`` as given (the gateway makes them where its trace is current), else the current trace's
    ``traceparent``, from a client span of its own when spans are on."""
    subject = subject or message.subject  # type: ignore[attr-defined]
    if headers is None and tracing.enabled:
        with tracing.span(subject, kind=tracing.CLIENT):
            return await _request(nc, subject, message, timeout, tracing.inject())
    return await _request(nc, subject, message, timeout, tracing.inject() if headers is None else headers)


async def _request(nc: NatsClient, subject: str, message: Message, timeout: float,
                   headers: dict[str, str] | None) -> Any:
    try:
        raw = await nc.request(subject, message.model_dump_json().encode(), timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise ServiceUnavailable(subject, "no service is listening") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ServiceUnavailable(subject, f"no answer within {timeout:g} s") from None
    return unwrap(raw.data, subject)


def unwrap(data: bytes, subject: str) -> Any:
    try:
        reply = Reply.model_validate_json(data)
    except ValueError:
        raise ServiceUnavailable(subject, f"unreadable reply {data[:80]!r}") from None
    if reply.ok:
        return reply.data
    assert reply.error is not None
    details = {k: v for k, v in reply.error.model_dump().items() if k not in ("code", "message")}
    raise DomainError(reply.error.message, code=reply.error.code, **details)


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()
