"""Webhook endpoints: registered with the stand-in and with localstripe; the stand-in's own events, signed.

localstripe sends the events of what it did (``payment_intent.succeeded``, ...) to the endpoints
registered with it; the stand-in sends those of what it decided itself (a decline, a failed
3-D Secure) to the same endpoints, shaped and signed as Stripe does, once, in the background.
localstripe keeps its registrations in memory only: the stand-in registers them again every few
seconds, so they outlive a restart of localstripe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.parse
from typing import Any

import aiohttp

from cartwheel.paymentserver.metering import Stats
from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.state import Registration, State
from cartwheel.paymentserver.upstream import Upstream

log = logging.getLogger(__name__)

API_VERSION = "2026-10-28.endive"  # what stripe-python 16.1 asks for
REREGISTER_EVERY = 5.0
QUIET = "cartwheel-standin (re-registering)"  # localstripe's access log leaves these out
DELIVERY_TIMEOUT = aiohttp.ClientTimeout(total=10)


def signature_header(payload: str, secret: str, timestamp: int) -> str:
    """``Stripe-Signature``: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<payload>">``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def make_event(kind: str, subject: dict[str, Any], created: int) -> dict[str, Any]:
    return {"id": f"evt_{secrets.token_hex(12)}", "object": "event", "api_version": API_VERSION, "created": created,
            "type": kind, "data": {"object": subject}, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}}


def webhook_path(webhook_id: str) -> str:
    return f"/_config/webhooks/{urllib.parse.quote(webhook_id, safe='')}"


def registration_form(registration: Registration) -> Params:
    return Params([("url", registration.url), ("secret", registration.secret),
                   *(("events[]", kind) for kind in registration.events)])


class Webhooks:
    def __init__(self, state: State, upstream: Upstream, stats: Stats) -> None:
        self.state = state
        self.upstream = upstream
        self.stats = stats
        self.lock = asyncio.Lock()  # a registration and the periodic re-registration never cross
        self.deliveries: set[asyncio.Task[None]] = set()

    async def register(self, webhook_id: str, registration: Registration) -> int:
        """Keep ``registration`` and pass it to localstripe; localstripe's HTTP status."""
        async with self.lock:
            answer = await self.upstream.call("POST", webhook_path(webhook_id),
                                              registration_form(registration))
            if answer.ok:
                self.state.webhooks[webhook_id] = registration
                self.state.changed()
                log.info("webhook %s: %s (%s)", webhook_id, registration.url,
                         ", ".join(registration.events) or "every event")
            return answer.status

    async def keep_registered(self) -> None:
        """Register every endpoint with localstripe again every few seconds (cancel the task to end it)."""
        while True:
            with contextlib.suppress(Exception):  # localstripe down: the next round
                async with self.lock:
                    for webhook_id, registration in list(self.state.webhooks.items()):
                        await self.upstream.call("POST", webhook_path(webhook_id),
                                                 registration_form(registration), user_agent=QUIET)
            await asyncio.sleep(REREGISTER_EVERY)

    def send(self, kind: str, subject: dict[str, Any]) -> None:
        """Deliver a ``kind`` event about ``subject`` to every endpoint that wants it, in the background."""
        created = int(time.time())
        payload = json.dumps(make_event(kind, subject, created), indent=2, sort_keys=True)
        for registration in self.state.webhooks.values():
            if registration.wants(kind):
                task = asyncio.get_running_loop().create_task(self._deliver(registration, kind, payload, created))
                self.deliveries.add(task)
                task.add_done_callback(self.deliveries.discard)

    async def _deliver(self, registration: Registration, kind: str, payload: str, created: int) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Stripe-Signature": signature_header(payload, registration.secret, created)}
        try:
            async with self.upstream.session.post(registration.url, data=payload.encode(), headers=headers,
                                                  timeout=DELIVERY_TIMEOUT) as response:
                delivered = 200 <= response.status < 300
                outcome = f"answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            delivered, outcome = False, f"failed: {exc!r}"
        self.stats.note("webhooks_delivered" if delivered else "webhooks_failed")
        log.info("webhook %s to %s %s", kind, registration.url, outcome)

    async def close(self) -> None:
        """Let deliveries under way finish (briefly), then stop them."""
        if self.deliveries:
            await asyncio.wait(self.deliveries, timeout=2)
        for task in list(self.deliveries):
            task.cancel()
