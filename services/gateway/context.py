"""What views reach through the app: settings, the bus port (the NATS bridge or a fake), the tenant directory,
the route table, and the tenant of the request in hand."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flask import current_app

from cartwheel.contracts.base import Message
from cartwheel.settings import Settings
from cartwheel.tenants import context as tenant_context

if TYPE_CHECKING:
    from services.gateway.api import Operation
    from services.gateway.tenancy import Hosts

EXTENSION = "cartwheel.gateway"


class Bus(Protocol):
    """What views need from NATS; :class:`services.gateway.bridge.NatsBridge` is the real one."""

    @property
    def started(self) -> bool: ...

    @property
    def connected(self) -> bool: ...

    loop_kind: str | None

    def start(self, wait: float = 0.0) -> None: ...

    def request(self, message: Message, timeout: float | None = None) -> Any: ...

    def kv_get(self, bucket: str, key: str, timeout: float | None = None) -> bytes | None: ...

    def kv_is_local(self, bucket: str) -> bool: ...

    def ping(self, subject: str, payload: bytes, timeout: float) -> bytes: ...

    def close(self, timeout: float = 5.0) -> None: ...


@dataclass
class Gateway:
    settings: Settings
    bus: Bus
    hosts: Hosts
    operations: list[Operation] = field(default_factory=list)


def gateway() -> Gateway:
    return current_app.extensions[EXTENSION]


def tenant() -> str:
    """The tenant of the request in hand, as its host named it (:mod:`services.gateway.tenancy`); the
    installation's own outside a tenant's request (the ops endpoints). Every message the gateway sends says it."""
    return tenant_context.current(gateway().settings.tenant)


def tenant_settings() -> Mapping[str, object]:
    """The settings of the request's tenant as registered (``currency``, ``locale``, ...); empty for the
    installation's own tenant, whose settings are the installation's."""
    entry = gateway().hosts.entry(tenant())
    return entry.settings if entry else {}
