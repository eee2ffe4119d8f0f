"""A fake bus for unit tests of the gateway: views talk to it instead of NATS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cartwheel.contracts.base import Message
from cartwheel.errors import ServiceUnavailable

Handler = Callable[[Message], Any]


class FakeBus:
    """Stands in for :class:`services.gateway.bridge.NatsBridge`: answers from handlers, records what was sent.

    ``handlers`` maps a message class to a function returning reply data (or raising DomainError /
    ServiceUnavailable); ``kv`` maps (bucket, key) to bytes, ``objects`` (bucket, name) to bytes;
    ``health`` maps a subject to reply bytes.
    """

    def __init__(self, handlers: dict[type[Message], Handler] | None = None, *, connected: bool = True) -> None:
        self.handlers = handlers or {}
        self.kv: dict[tuple[str, str], bytes] = {}
        self.health: dict[str, bytes] = {}
        self.sent: list[Message] = []
        self.kv_reads: list[tuple[str, str]] = []
        self.objects: dict[tuple[str, str], bytes] = {}  # (bucket, name) → bytes: the object store
        self.kv_local = True  # as a worker whose copies of the buckets are in sync
        self.connected = connected
        self.started = True
        self.loop_kind: str | None = "fake"

    def start(self, wait: float = 0.0) -> None:
        self.started = True

    def request(self, message: Message, timeout: float | None = None) -> Any:
        self._require_connection(message.subject)  # type: ignore[attr-defined]
        self.sent.append(message)
        handler = self.handlers.get(type(message))
        if handler is None:
            raise ServiceUnavailable(message.subject, "no service is listening")  # type: ignore[attr-defined]
        return handler(message)

    def kv_get(self, bucket: str, key: str, timeout: float | None = None) -> bytes | None:
        self._require_connection(bucket)
        self.kv_reads.append((bucket, key))
        return self.kv.get((bucket, key))

    def object_get(self, bucket: str, name: str, timeout: float | None = None) -> bytes | None:
        self._require_connection(bucket)
        return self.objects.get((bucket, name))

    def object_put(self, bucket: str, name: str, data: bytes, timeout: float | None = None) -> None:
        self._require_connection(bucket)
        self.objects[(bucket, name)] = data

    def object_delete(self, bucket: str, name: str, timeout: float | None = None) -> None:
        self._require_connection(bucket)
        self.objects.pop((bucket, name), None)

    def kv_is_local(self, bucket: str) -> bool:
        return self.kv_local

    def ping(self, subject: str, payload: bytes, timeout: float) -> bytes:
        self._require_connection(subject)
        if subject not in self.health:
            raise ServiceUnavailable(subject, "no service is listening")
        return self.health[subject]

    def close(self, timeout: float = 5.0) -> None:
        self.started = False

    def _require_connection(self, subject: str) -> None:
        if not self.connected:
            raise ServiceUnavailable(subject, "not connected")
