"""Checkout Sessions in the stand-in: made (Idempotency-Key honoured), read, completed, and expired — when
asked, or by themselves at ``expires_at`` — each change announced as Stripe does.

``checkout.session.completed`` and ``checkout.session.expired`` are signed and sent by the
stand-in's webhook sender; an expired session's intent is cancelled, as at Stripe. Paying on the
hosted page is :mod:`.pagepayment`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.sessionparams import Window, request_digest, session_from
from cartwheel.paymentserver.sessions import CheckoutSession, present_session
from cartwheel.paymentserver.standin import Standin

log = logging.getLogger(__name__)

EXPIRY_CHECK = 0.5  # seconds between looks for sessions past their expires_at


class IdempotencyKeyReused(ValueError):
    """The same Idempotency-Key with other parameters: Stripe's 400 ``idempotency_error``."""


def answered(response: web.Response) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of one of the stand-in's own answers (its intent logic answers as the API does)."""
    try:
        body = json.loads(response.text or "{}")
    except ValueError:
        body = {}
    return response.status, body if isinstance(body, dict) else {}


class Checkout:
    def __init__(self, standin: Standin, window: Window, clock: Callable[[], float] = time.time) -> None:
        self.state, self.intents, self.webhooks, self.upstream = (standin.state, standin.intents, standin.webhooks,
                                                                  standin.upstream)
        self.window = window
        self.clock = clock
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # one step at a time per session

    def create(self, params: Params, idempotency_key: str | None, base_url: str) -> tuple[CheckoutSession, bool]:
        """A new session, or the one made earlier with this ``idempotency_key`` (True: replayed)."""
        known = self.state.sessions.get(self.state.session_keys.get(idempotency_key or "", ""))
        if known is not None:
            if known.request_digest != request_digest(params):
                raise IdempotencyKeyReused(idempotency_key)
            return known, True
        session = session_from(params, now=int(self.clock()), window=self.window, base_url=base_url)
        self.state.sessions[session.id] = session
        if idempotency_key:
            self.state.session_keys[idempotency_key] = session.id
        self.state.changed()
        log.info("%s: %d %s, expires at %d", session.id, session.amount_total, session.currency, session.expires_at)
        return session, False

    def find(self, session_id: str) -> CheckoutSession | None:
        return self.state.sessions.get(session_id)

    def lock(self, session_id: str) -> asyncio.Lock | contextlib.nullcontext[None]:
        """The session's lock; none for an id that is no session (a lock for every id asked would pile up)."""
        return self.locks[session_id] if session_id in self.state.sessions else contextlib.nullcontext()

    async def current(self, session_id: str) -> CheckoutSession | None:
        """The session as it is now: expired first if its time is up (call it under the session's lock)."""
        session = self.find(session_id)
        if session is not None and session.due(self.clock()):
            await self.close(session)
        return session

    async def expire(self, session_id: str) -> bool:
        """Expire an open session now; False if it was not open (or was found paid, and completed instead)."""
        async with self.lock(session_id):
            if (session := self.find(session_id)) is None or not session.is_open:
                return False
            await self.close(session)
            return session.status == "expired"

    async def keep_expiring(self) -> None:
        """Expire every open session past its ``expires_at``, every 0.5 s (cancel the task to end it)."""
        while True:
            await asyncio.sleep(EXPIRY_CHECK)
            for session in [found for found in self.state.sessions.values() if found.due(self.clock())]:
                try:
                    await self.expire(session.id)
                except Exception as exc:  # localstripe down: the next round
                    log.warning("%s could not be expired yet (%r)", session.id, exc)

    async def read_intent(self, session: CheckoutSession) -> dict[str, Any] | None:
        """The session's PaymentIntent as the API shows it: None before the first attempt (or if it is lost)."""
        if session.payment_intent is None:
            return None
        status, found = answered(await self.intents.retrieve(session.payment_intent, Params(), None))
        return found if status == 200 else None

    def complete(self, session: CheckoutSession) -> None:
        session.status = "complete"
        self.state.changed()
        log.info("%s complete: %s paid", session.id, session.payment_intent)
        self.webhooks.send("checkout.session.completed", present_session(session))

    async def close(self, session: CheckoutSession) -> None:
        """Expire ``session``: its intent cancelled first (found paid, the session is complete instead)."""
        if (intent := await self.read_intent(session)) is not None:
            if intent.get("status") == "succeeded":
                self.complete(session)
                return
            cancelled = await self.upstream.call("POST", f"/v1/payment_intents/{intent['id']}/cancel")
            if not cancelled.ok:
                log.warning("%s: its intent %s was not cancelled (%d)", session.id, intent["id"], cancelled.status)
        session.status = "expired"
        self.state.changed()
        log.info("%s expired", session.id)
        self.webhooks.send("checkout.session.expired", present_session(session))


CHECKOUT = web.AppKey("checkout", Checkout)
