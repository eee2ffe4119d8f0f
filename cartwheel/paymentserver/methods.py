"""PaymentMethods: Stripe's test ids made real in localstripe, and which test card each method is.

localstripe knows three of Stripe's test ids and declines at charge time for one card number.
Here every ``pm_card_*`` id of the table becomes a PaymentMethod in localstripe (made once per id
and kept), and every method made through the stand-in — by a test id or a typed card number — is
remembered with its test card, so a confirmation can answer as Stripe would for that card.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cartwheel.paymentserver.answers import json_answer, relay
from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.present import card_error, present_method
from cartwheel.paymentserver.state import State
from cartwheel.paymentserver.testcards import TestCard, card_for_number, card_for_payment_method, normalise_number
from cartwheel.paymentserver.upstream import Answer, Upstream

BROWSER_NOISE = ("key", "payment_user_agent", "referrer", "guid", "muid", "sid", "time_on_page", "pasted_fields",
                 "client_attribution_metadata")
"""What Stripe.js adds to a browser's request and localstripe refuses."""


class Methods:
    def __init__(self, state: State, upstream: Upstream) -> None:
        self.state = state
        self.upstream = upstream
        self.lock = asyncio.Lock()  # one method made per test id

    def card_of(self, method_id: Any) -> TestCard | None:
        """The test card behind a method of localstripe's, if it was made through the stand-in."""
        return card_for_number(self.state.methods.get(method_id)) if isinstance(method_id, str) else None

    async def resolve(self, method_id: str) -> str:
        """localstripe's method for a test id (``pm_card_visa``), made at first use; any other id as it is."""
        card = card_for_payment_method(method_id)
        if card is None:
            return method_id
        async with self.lock:
            if made := self.state.aliases.get(method_id):
                return made
            form = Params([("type", "card"), ("card[number]", card.upstream_number), ("card[exp_month]", "12"),
                           ("card[exp_year]", "2034"), ("card[cvc]", "123")])
            answer = await self.upstream.call("POST", "/v1/payment_methods", form)
            if not answer.ok:
                return method_id  # localstripe's refusal comes back on the call that names it
            made = str(answer.json()["id"])
            self.remember(made, card)
            self.state.aliases[method_id] = made
            return made

    async def using(self, method_id: str, call: Callable[[str], Awaitable[Answer]]) -> Answer:
        """``call`` with localstripe's method for ``method_id``; made again if localstripe lost it (a restart
        without its state file, or a SIGKILL within 0.2 s of making it)."""
        resolved = await self.resolve(method_id)
        answer = await call(resolved)
        if (answer.status == 404 and self.state.aliases.get(method_id) == resolved != method_id
                and not (await self.upstream.call("GET", f"/v1/payment_methods/{resolved}")).ok):  # not another 404
            del self.state.aliases[method_id]
            answer = await call(await self.resolve(method_id))
        return answer

    def remember(self, method_id: str, card: TestCard) -> None:
        self.state.methods[method_id] = card.number
        self.state.changed()

    async def create(self, params: Params) -> Answer:
        """``POST /v1/payment_methods`` (a secret key, or a browser's publishable one): the card's outcome is kept."""
        for noise in BROWSER_NOISE:
            params.pop(noise)
        card = card_for_number(params.get("card[number]"))
        if params.get("card[number]") is not None:
            params.set("card[number]", normalise_number(params.get("card[number]") or ""))
        if card is not None and card.upstream_number != card.number:
            params.set("card[number]", card.upstream_number)
            params.set("card[cvc]", "123")
        answer = await self.upstream.call("POST", "/v1/payment_methods", params)
        made = answer.parsed
        if answer.ok and made and card is not None:
            self.remember(str(made["id"]), card)
        return answer

    def show(self, answer: Answer) -> web.Response:
        """localstripe's answer about a method, with its test card's brand and digits."""
        made = answer.parsed
        if not answer.ok or made is None or made.get("object") != "payment_method":
            return relay(answer)
        return relay(answer, present_method(made, self.card_of(made.get("id"))))

    async def attach(self, method_id: str, params: Params) -> web.Response:
        """Attach to a customer; a decline card is declined here, as Stripe checks a card it attaches."""
        card = card_for_payment_method(method_id) or self.card_of(method_id)
        if card is not None and not card.attaches and card.error is not None:
            found = await self.using(method_id, lambda made: self.upstream.call("GET", f"/v1/payment_methods/{made}"))
            shown = present_method(found.parsed or {"id": method_id}, card)
            return json_answer({"error": card_error(card.error, shown)}, 402)
        return self.show(await self.using(
            method_id, lambda made: self.upstream.call("POST", f"/v1/payment_methods/{made}/attach", params)))

    async def describe(self, method_id: str | None) -> dict[str, Any] | None:
        """The method as Stripe shows it in ``last_payment_error``."""
        if not method_id:
            return None
        found = await self.upstream.call("GET", f"/v1/payment_methods/{method_id}")
        return present_method(found.parsed or {"id": method_id}, self.card_of(method_id)) if found.ok else None
