"""The stand-in's parts, as one object the routes reach through the application."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from cartwheel.paymentserver.intents import Intents
from cartwheel.paymentserver.metering import SlidingWindow, Stats
from cartwheel.paymentserver.methods import Methods
from cartwheel.paymentserver.state import State
from cartwheel.paymentserver.upstream import Upstream
from cartwheel.paymentserver.webhooks import Webhooks


@dataclass
class Standin:
    state: State
    upstream: Upstream
    state_path: Path | None = None
    rate_limit: float | None = None
    stats: Stats = field(default_factory=Stats)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limiter = SlidingWindow(self.rate_limit) if self.rate_limit else None
        self.webhooks = Webhooks(self.state, self.upstream, self.stats)
        self.methods = Methods(self.state, self.upstream)
        self.intents = Intents(self.state, self.upstream, self.methods, self.webhooks, self.stats)


STANDIN = web.AppKey("standin", Standin)
