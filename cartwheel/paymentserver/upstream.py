"""Calls to localstripe: requests forwarded as they came, and the stand-in's own calls with its own key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import aiohttp

from cartwheel.paymentserver.params import Params

OWN_KEY = "sk_test_cartwheel_standin"  # localstripe takes any secret test key; browsers hold only pk_ keys
TIMEOUT = aiohttp.ClientTimeout(total=30)
USER_AGENT = "cartwheel-standin"
FORWARDED_HEADERS = frozenset({"authorization", "idempotency-key", "content-type", "stripe-version", "origin",
                               "user-agent"})


class UpstreamDown(RuntimeError):
    """localstripe did not answer (it is restarting, or gone)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)

    @cached_property
    def parsed(self) -> dict[str, Any] | None:
        """The JSON object answered, if the answer is one (read once)."""
        if self.content_type != "application/json":
            return None
        try:
            found = self.json()
        except ValueError:
            return None
        return found if isinstance(found, dict) else None


class Upstream:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """One session for localstripe and webhook endpoints, opened on the server's loop at first use."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, method: str, path: str, *, query: str = "", body: bytes | None = None,
                   headers: Mapping[str, str] | None = None) -> Answer:
        """``method path?query`` with ``body`` and the given headers (those of :data:`FORWARDED_HEADERS`)."""
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        kept = {name: value for name, value in (headers or {}).items() if name.lower() in FORWARDED_HEADERS}
        try:
            async with self.session.request(method, url, data=body, headers=kept) as response:
                return Answer(response.status, await response.read(), response.content_type)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UpstreamDown(f"localstripe at {self.base} did not answer: {exc!r}") from None

    async def call(self, method: str, path: str, params: Params | None = None, *,
                   json_body: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
                   user_agent: str = USER_AGENT) -> Answer:
        """The stand-in's own call with its own key: ``params`` as a form (a query for GET), or ``json_body``."""
        headers = {"Authorization": f"Bearer {OWN_KEY}", "User-Agent": user_agent}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            return await self.send(method, path, body=json.dumps(json_body).encode(), headers=headers)
        encoded = params.encode() if params else ""
        if method == "GET":
            return await self.send(method, path, query=encoded, headers=headers)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return await self.send(method, path, body=encoded.encode(), headers=headers)
