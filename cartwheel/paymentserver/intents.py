"""PaymentIntents: what localstripe refuses is kept here, and a decline is decided here, as Stripe answers it.

A confirmation with a card that declines never reaches localstripe (where the intent would be stuck
after a failed charge): the intent's method is taken off there, the decline is kept as its
``last_payment_error`` and answered with 402 and the intent, and ``payment_intent.payment_failed``
goes to the webhook endpoints. A later confirmation with another method goes through to localstripe
and clears it. Every answer about an intent shows what the stand-in keeps for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cartwheel.paymentserver.answers import json_answer, relay, stripe_error, wrong_client_secret
from cartwheel.paymentserver.metering import Stats
from cartwheel.paymentserver.methods import Methods
from cartwheel.paymentserver.params import Params, as_bool
from cartwheel.paymentserver.present import authentication_error, card_error, present_intent
from cartwheel.paymentserver.state import State
from cartwheel.paymentserver.testcards import CardError
from cartwheel.paymentserver.upstream import Answer, Upstream
from cartwheel.paymentserver.webhooks import Webhooks

log = logging.getLogger(__name__)

KEPT = ("receipt_email", "description", "statement_descriptor_suffix")
"""Parameters localstripe refuses and Stripe shows back on the intent."""
NO_RETURN_URL = ("return_url must be specified because this Payment Intent is configured to automatically accept the "
                 "payment methods enabled in the Dashboard, some of which may require a full page redirect to "
                 "succeed. If you do not want to accept redirect-based payment methods, set "
                 "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and Payment "
                 "Intents.")
"""Stripe's answer to confirming such an intent without a ``return_url`` (server-side confirms forget it)."""
IGNORED = ("return_url", "use_stripe_sdk", "off_session", "client_secret", "key")
"""Parameters localstripe refuses that change nothing it simulates (``confirm`` is handled here)."""
PATH = "/v1/payment_intents"


class Intents:
    def __init__(self, state: State, upstream: Upstream, methods: Methods, webhooks: Webhooks, stats: Stats) -> None:
        self.state = state
        self.upstream = upstream
        self.methods = methods
        self.webhooks = webhooks
        self.stats = stats

    def show(self, answer: Answer) -> web.Response:
        """localstripe's answer, each intent in it with the stand-in's notes."""
        found = answer.parsed
        if not answer.ok or found is None:
            return relay(answer)
        if found.get("object") == "list":
            return relay(answer, {**found, "data": [self.present(item) for item in found.get("data", [])]})
        return relay(answer, self.present(found))

    def present(self, item: Any) -> Any:
        if isinstance(item, dict) and item.get("object") == "payment_intent":
            return present_intent(item, self.state.intents.get(str(item.get("id"))))
        return item

    async def read(self, intent_id: str) -> Answer:
        return await self.upstream.call("GET", f"{PATH}/{intent_id}")

    async def create(self, params: Params, idempotency_key: str | None) -> web.Response:
        kept = self._keep(params)
        confirm = as_bool(params.pop("confirm"))
        later = Params([pair for pair in params.pairs if pair[0] == "expand[]"])
        for name in IGNORED:
            params.pop(name)
        if not params.has_tree("payment_method_types"):
            params.pairs.append(("payment_method_types[]", "card"))
        answer = await self._with_method(params, lambda: self.upstream.call("POST", PATH, params,
                                                                            idempotency_key=idempotency_key))
        made = answer.parsed
        if not answer.ok or made is None:
            return relay(answer)
        if kept:
            self.state.notes(str(made["id"])).params.update(kept)
            self.state.changed()
        return await self.confirm(str(made["id"]), later) if confirm else self.show(answer)

    async def update(self, intent_id: str, params: Params) -> web.Response:
        kept = self._keep(params)
        if params:
            answer = await self._with_method(params, lambda: self.upstream.call("POST", f"{PATH}/{intent_id}", params))
        else:
            answer = await self.read(intent_id)
        if answer.ok and kept:
            self.state.notes(intent_id).params.update(kept)
            self.state.changed()
        return self.show(answer)

    async def retrieve(self, intent_id: str, query: Params, client_secret: str | None) -> web.Response:
        """An intent; for a browser (``client_secret`` given) only with the intent's own secret."""
        answer = await self.upstream.call("GET", f"{PATH}/{intent_id}", query)
        found = answer.parsed
        if answer.ok and client_secret is not None and (found or {}).get("client_secret") != client_secret:
            return wrong_client_secret()
        return self.show(answer)

    async def confirm(self, intent_id: str, params: Params, client_secret: str | None = None) -> web.Response:
        """Confirm (with ``payment_method`` or ``payment_method_data`` if given), answering a decline itself."""
        method = params.pop("payment_method")
        data = params.pop_tree("payment_method_data")
        kept = self._keep(params)
        return_url = params.get("return_url")
        for name in IGNORED:
            params.pop(name)
        if client_secret is not None:
            current = await self.read(intent_id)
            if not current.ok:  # closed, not open: no secret checked, no confirmation
                return self.show(current)
            if (current.parsed or {}).get("client_secret") != client_secret:
                return wrong_client_secret()
        if not return_url and self._may_redirect(intent_id):
            return stripe_error(400, NO_RETURN_URL, param="return_url")
        if data:
            made = await self.methods.create(data)
            if not made.ok:
                return self.methods.show(made)
            method = str(made.json()["id"])
        if method:
            chosen = await self.methods.using(method, lambda made: self.upstream.call(
                "POST", f"{PATH}/{intent_id}", Params([("payment_method", made)])))
            if not chosen.ok:
                return self.show(chosen)
        if kept:
            self.state.notes(intent_id).params.update(kept)
            self.state.changed()
        current = await self.read(intent_id)
        intent = current.parsed
        if not current.ok or intent is None:
            return relay(current)
        card = self.methods.card_of(intent.get("payment_method"))
        if card and card.outcome == "declined" and card.error and intent.get("status") == "requires_confirmation":
            await self.upstream.call("POST", f"{PATH}/{intent_id}", json_body={"payment_method": None})
            return await self._declined(intent_id, card_error(card.error, {}), intent["payment_method"], 402)
        answer = await self.upstream.call("POST", f"{PATH}/{intent_id}/confirm", params)
        if answer.ok:
            self._clear(intent_id)
        return self.show(answer)

    async def authenticate(self, intent_id: str, query: Params, body: Params, headers: dict[str, str]) -> web.Response:
        """The buyer's answer to 3-D Secure, passed to localstripe; a failure (or a card that declines after it)
        is a ``last_payment_error`` and a ``payment_intent.payment_failed`` event, as at Stripe."""
        success = as_bool(body.get("success") or query.get("success"))
        current = (await self.read(intent_id)).parsed or {}
        method = current.get("payment_method")
        card = self.methods.card_of(method)
        declines = bool(success and card and card.outcome == "requires_action_then_declined" and card.error)
        if declines:
            for params in (query, body):
                if params.get("success") is not None:
                    params.set("success", "false")
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}  # the body is re-encoded
        answer = await self.upstream.send("POST", f"{PATH}/{intent_id}/_authenticate", query=query.encode(),
                                          body=body.encode().encode(), headers=headers)
        if not answer.ok:
            return self.show(answer)
        if success and not declines:
            self._clear(intent_id)
            return self.show(answer)
        error: CardError | None = card.error if declines and card else None
        return await self._declined(intent_id, card_error(error, {}) if error else authentication_error(None),
                                    method, 200)

    async def _declined(self, intent_id: str, error: dict[str, Any], method: str | None, status: int) -> web.Response:
        """Keep ``error`` as the intent's last, tell the webhook endpoints, answer with the intent."""
        error["payment_method"] = await self.methods.describe(method)
        notes = self.state.notes(intent_id)
        notes.last_payment_error, notes.failed_method = error, method
        self.state.changed()
        self.stats.note("declined")
        log.info("%s declined: %s", intent_id, error.get("decline_code") or error.get("code"))
        answer = await self.read(intent_id)
        intent = self.present(answer.parsed or {"id": intent_id, "object": "payment_intent"})
        self.webhooks.send("payment_intent.payment_failed", intent)
        return json_answer({"error": {**error, "payment_intent": intent}} if status == 402 else intent, status)

    async def _with_method(self, params: Params, call: Callable[[], Awaitable[Answer]]) -> Answer:
        """``call`` with the ``payment_method`` parameter, if any, as localstripe's method (see Methods.using)."""
        method = params.get("payment_method")
        if method is None:
            return await call()

        async def with_made(made: str) -> Answer:
            params.set("payment_method", made)
            return await call()

        return await self.methods.using(method, with_made)

    def _may_redirect(self, intent_id: str) -> bool:
        """Whether the intent takes every method the account offers, redirecting ones too (Stripe then wants a
        ``return_url`` at confirmation)."""
        methods = self.state.notes(intent_id).params.get("automatic_payment_methods") or {}
        return bool(methods.get("enabled")) and methods.get("allow_redirects", "always") == "always"

    def _keep(self, params: Params) -> dict[str, Any]:
        kept: dict[str, Any] = {name: params.pop(name) or None for name in KEPT  # "": unset, as at Stripe
                                if params.get(name) is not None}
        if params.has_tree("automatic_payment_methods"):
            found = params.pop_tree("automatic_payment_methods")
            kept["automatic_payment_methods"] = {"allow_redirects": found.get("allow_redirects") or "always",
                                                 "enabled": as_bool(found.get("enabled"))}
        return kept

    def _clear(self, intent_id: str) -> None:
        notes = self.state.intents.get(intent_id)
        if notes is not None and notes.last_payment_error is not None:
            notes.last_payment_error = notes.failed_method = None
            self.state.changed()
