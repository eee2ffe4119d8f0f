"""Calling a lane: ``await client.call(key, kind, body)`` → the handler's reply, applied exactly once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cartwheel import subjects, tracing
from cartwheel.bus import unwrap
from cartwheel.errors import Invalid, ServiceUnavailable
from cartwheel.lanes.types import COMMAND_ID, COMMAND_ID_MAX, KEY

FIRST_WAIT = 1.0
"""Seconds before the first resend; each later wait doubles. A healthy lane answers in milliseconds;
resending sooner only adds load to a lane that is slow because it is busy."""

# Started clients by reply inbox, for a worker here to answer directly (weakly: one never closed still goes).
_IN_THIS_PROCESS: weakref.WeakValueDictionary[str, LaneClient] = weakref.WeakValueDictionary()


def answer_in_process(reply_to: str, data: bytes) -> bool:
    """Hand a lane worker's reply to the client that waits for it, when that client is in this process and on
    this event loop (a cart request applied by the cart's own lane worker): no trip through NATS and back, a
    publish and a message fewer. False: it is elsewhere, and the reply goes to ``reply_to`` over NATS."""
    inbox, command_id = _reply_address(reply_to)
    client = _IN_THIS_PROCESS.get(inbox)
    if client is None or client._loop is not asyncio.get_running_loop():
        return False
    client._deliver(command_id, data)
    return True


def _reply_address(reply_to: str) -> tuple[str, str]:
    """A reply's subject, ``<client's inbox>.<command id>`` (the header :meth:`LaneClient.call` sends): both."""
    inbox, _, command_id = reply_to.rpartition(".")
    return inbox, command_id


class LaneClient:
    """One shared reply inbox for all calls of this client; safe to use from many tasks at once.

    The first send is a plain publish (one message, no acknowledgement to wait for). If no
    reply arrives within 1 s, then 2 s, 4 s, ... until ``timeout``, the command is sent
    again with the same id, acknowledged by the stream: if the stream already had it, the
    client asks for the recorded reply, and otherwise keeps waiting. A retry can never apply
    a command twice.
    """

    def __init__(self, nc: NatsClient, lane: str) -> None:
        self.nc = nc
        self.lane = lane
        self.js = nc.jetstream()
        self._inbox = ""
        self._sub: Subscription | None = None
        self._waiting: dict[str, list[asyncio.Future[bytes]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> LaneClient:
        prefix, token = self.nc.new_inbox().rsplit(".", 1)
        self._inbox = subjects.lane_replies(prefix, token)  # lane workers may answer here, nowhere else of ours
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        self._loop = asyncio.get_running_loop()
        _IN_THIS_PROCESS[self._inbox] = self
        return self

    async def close(self) -> None:
        _IN_THIS_PROCESS.pop(self._inbox, None)
        if self._sub:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_reply(self, msg: Msg) -> None:
        self._deliver(_reply_address(msg.subject)[1], msg.data)

    def _deliver(self, command_id: str, data: bytes) -> None:
        for waiter in self._waiting.get(command_id, ()):
            if not waiter.done():
                waiter.set_result(data)

    async def call(
        self, key: str, kind: str, body: dict[str, Any], command_id: str | None = None, timeout: float = 5.0,
        tenant: str | None = None,
    ) -> Any:
        """Apply ``kind`` to ``key`` in ``tenant``'s database (by default the body's ``tenant``, else the
        installation's own); the reply's data, or DomainError / ServiceUnavailable."""
        if tenant is None and isinstance(body.get("tenant"), str):
            tenant = body["tenant"]
        if tracing.enabled:
            with tracing.span(f"{self.lane} {kind}", kind=tracing.PRODUCER, attributes={"cartwheel.lane.key": key}):
                return await self._call(key, kind, body, command_id, timeout, tenant)
        return await self._call(key, kind, body, command_id, timeout, tenant)

    async def _call(self, key: str, kind: str, body: dict[str, Any], command_id: str | None, timeout: float,
                    tenant: str | None) -> Any:
        if not KEY.match(key):
            raise Invalid(f"lane key {key!r} is not a plain token", fields=[{"field": "key", "message": "invalid"}])
        command_id = command_id or uuid.uuid4().hex
        if not COMMAND_ID.match(command_id):
            raise Invalid(f"command id {command_id[:120]!r} is not a plain token of 1 to {COMMAND_ID_MAX} characters")
        if self._sub is None:
            raise RuntimeError("LaneClient.start() first")
        subject = subjects.lane_command(self.lane, key)
        payload = json.dumps({"kind": kind, "body": body}, separators=(",", ":"), default=str).encode()
        headers = tracing.inject({"Nats-Msg-Id": command_id, subjects.LANE_REPLY_HEADER: f"{self._inbox}.{command_id}"})
        assert headers is not None
        if tenant is not None:
            headers[subjects.LANE_TENANT_HEADER] = tenant
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(command_id, []).append(waiter)  # the same id may be in flight twice
        deadline = time.monotonic() + timeout
        try:
            await self.nc.publish(subject, payload, headers=headers)
            wait = FIRST_WAIT
            while (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(min(wait, left)):
                        return unwrap(await asyncio.shield(waiter), subject)
                except TimeoutError:
                    wait *= 2
                if deadline - time.monotonic() > 0 and (
                    data := await self._resend(subject, payload, headers, command_id, tenant)
                ):
                    return unwrap(data, subject)
            raise ServiceUnavailable(subject, f"no reply within {timeout:g} s (command {command_id})")
        finally:
            waiters = self._waiting.get(command_id, [])
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[command_id]

    async def _resend(self, subject: str, payload: bytes, headers: dict[str, str], command_id: str,
                      tenant: str | None) -> bytes | None:
        """Send again with an acknowledgement; the recorded reply if the command was already applied."""
        try:
            ack = await self.js.publish(subject, payload, headers=headers, timeout=2)
        except (nats.errors.Error, TimeoutError):
            return None  # NATS itself is struggling: wait, then try once more
        if not ack.duplicate:
            return None  # the first send never arrived; this one will be applied and answered
        try:
            answer = await self.nc.request(
                subjects.lane_outcome(self.lane), json.dumps({"command_id": command_id, "tenant": tenant}).encode(),
                timeout=2,
            )
        except (nats.errors.Error, TimeoutError):
            return None
        found = json.loads(answer.data)
        return json.dumps(found["reply"]).encode() if found.get("found") else None
