"""What the stand-in knows that localstripe does not, and where it keeps it.

Per intent: the parameters localstripe refuses (``receipt_email``, ...) and the last decline; per
PaymentMethod localstripe holds: which test card it is; per test id (``pm_card_visa``): the method
made for it; the webhook endpoints; the Checkout Sessions (localstripe has none) and the
Idempotency-Keys they were made with. In memory, or in a JSON file written atomically (0600) at most
every 0.2 s — or ten times what a write takes, once the file is large — and read back at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cartwheel.files import private_dir, write_private
from cartwheel.paymentserver.sessions import CheckoutSession

log = logging.getLogger(__name__)

FLUSH_EVERY = 0.2
FORMAT = 1


@dataclass
class IntentNotes:
    params: dict[str, Any] = field(default_factory=dict)  # shown on the intent as Stripe would
    last_payment_error: dict[str, Any] | None = None
    failed_method: str | None = None  # the method that last_payment_error is about


@dataclass
class Registration:
    url: str
    secret: str
    events: list[str] = field(default_factory=list)  # empty: every event

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events


@dataclass
class State:
    intents: dict[str, IntentNotes] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)  # localstripe's PaymentMethod id → test card number
    aliases: dict[str, str] = field(default_factory=dict)  # pm_card_visa → the localstripe method made for it
    webhooks: dict[str, Registration] = field(default_factory=dict)
    sessions: dict[str, CheckoutSession] = field(default_factory=dict)
    session_keys: dict[str, str] = field(default_factory=dict)  # Idempotency-Key → the session made with it
    dirty: bool = field(default=False, compare=False)

    def notes(self, intent_id: str) -> IntentNotes:
        return self.intents.setdefault(intent_id, IntentNotes())

    def changed(self) -> None:
        self.dirty = True

    def clear_data(self) -> None:
        """What ``DELETE /_config/data`` clears; webhook endpoints stay registered, as in localstripe."""
        self.intents.clear()
        self.methods.clear()
        self.aliases.clear()
        self.sessions.clear()
        self.session_keys.clear()
        self.changed()

    def to_json(self) -> bytes:
        body = {"format": FORMAT, "intents": {k: asdict(v) for k, v in self.intents.items()},
                "methods": self.methods, "aliases": self.aliases,
                "webhooks": {k: asdict(v) for k, v in self.webhooks.items()},
                "sessions": {k: asdict(v) for k, v in self.sessions.items()}, "session_keys": self.session_keys}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> State:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError(f"unknown format {body.get('format')!r}")
        return cls(intents={k: IntentNotes(**v) for k, v in body["intents"].items()}, methods=body["methods"],
                   aliases=body["aliases"], webhooks={k: Registration(**v) for k, v in body["webhooks"].items()},
                   sessions={k: CheckoutSession.from_dict(v) for k, v in body.get("sessions", {}).items()},
                   session_keys=body.get("session_keys", {}))  # files written before sessions have none


def load(path: Path | None) -> State:
    """The state kept in ``path``; an unreadable file is set aside (``.unreadable-<time>``) and the state is empty."""
    if path is None or not path.exists():
        return State()
    try:
        return State.from_json(path.read_bytes())
    except (OSError, ValueError, TypeError, KeyError) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        os.replace(path, aside)
        log.warning("%s could not be read (%r); set aside as %s, starting empty", path, exc, aside.name)
        return State()


def save(state: State, path: Path) -> None:
    state.dirty = False  # a change made while writing marks it again
    try:
        write_private(path, state.to_json())
    except OSError as exc:
        state.dirty = True  # the next round tries again
        log.warning("the stand-in's state was not written to %s (%r)", path, exc)


async def keep_saved(state: State, path: Path) -> None:
    """Write ``state`` to ``path`` whenever it changed, then at the end (cancel the task to end it)."""
    private_dir(path.parent)
    took = 0.0
    try:
        while True:
            await asyncio.sleep(max(FLUSH_EVERY, 10 * took))  # writing costs a tenth of the server's time at most
            if state.dirty:
                began = time.monotonic()
                save(state, path)
                took = time.monotonic() - began
    finally:
        with contextlib.suppress(Exception):
            if state.dirty:
                save(state, path)
