"""Paying a Checkout Session on the hosted page, through the stand-in's own intent logic: a decline and
3-D Secure answer as for any intent, and a second attempt after a decline goes through.

One PaymentIntent per session, made at the first attempt (the session's amount and currency,
``payment_intent_data``'s metadata and receipt email) and confirmed again at each later one with
the card just typed. Each step holds the session's lock and finds it as it is now: a session that
expired meanwhile takes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from cartwheel.paymentserver.checkout import Checkout, answered
from cartwheel.paymentserver.methods import Methods
from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.sessions import CheckoutSession
from cartwheel.paymentserver.upstream import OWN_KEY

log = logging.getLogger(__name__)

NOT_STARTED = "The payment could not be started. Try again in a moment."
NOT_A_CARD = ("Your card number is invalid (the embedded payment server takes 16-digit numbers and 3-digit CVCs, and "
              "Stripe's test cards).")
AUTHENTICATION_FAILED = ("We are unable to authenticate your payment method. Please choose a different payment "
                         "method and try again.")
Outcome = Literal["form", "declined", "challenge", "paid", "closed", "missing"]


@dataclass(frozen=True)
class Attempt:
    """What the hosted page shows next; ``message`` is the reason an attempt failed."""

    outcome: Outcome
    session: CheckoutSession | None = None
    message: str | None = None


class PagePayment:
    def __init__(self, checkout: Checkout, methods: Methods) -> None:
        self.checkout = checkout
        self.intents = checkout.intents
        self.methods = methods

    async def view(self, session_id: str) -> Attempt:
        """What the page shows now: the form, the pending 3-D Secure challenge, or that the session is closed."""
        async with self.checkout.lock(session_id):
            session, refused = await self._payable(session_id)
            if session is None:
                return refused
            intent = await self.checkout.read_intent(session)
            return Attempt("challenge" if (intent or {}).get("status") == "requires_action" else "form", session)

    async def pay(self, session_id: str, card: Params) -> Attempt:
        """Pay with the card typed on the page (``card[number]``, ...): paid, declined, or a challenge to answer."""
        async with self.checkout.lock(session_id):
            session, refused = await self._payable(session_id)
            if session is None:
                return refused
            intent = await self._intent(session)
            if intent is None:
                return Attempt("declined", session, NOT_STARTED)
            if intent.get("status") == "succeeded":  # paid a moment before a crash: nothing to take again
                self.checkout.complete(session)
                return Attempt("paid", session)
            if intent.get("status") == "requires_action":
                return Attempt("challenge", session, "Complete or fail the authentication first.")
            method = await self.methods.create(Params([("type", "card"), *card.pairs]))
            if not method.ok:
                return Attempt("declined", session, NOT_A_CARD)
            chosen = Params([("payment_method", str(method.json()["id"]))])
            return self._after(session, *answered(await self.intents.confirm(str(intent["id"]), chosen)))

    async def authenticate(self, session_id: str, success: bool) -> Attempt:
        """The buyer's answer to the 3-D Secure challenge of the session's intent."""
        async with self.checkout.lock(session_id):
            session, refused = await self._payable(session_id)
            if session is None:
                return refused
            intent = await self.checkout.read_intent(session)
            if intent is None or intent.get("status") != "requires_action":
                return Attempt("form", session)
            body = Params([("client_secret", str(intent.get("client_secret"))), ("success", str(success).lower())])
            answer = await self.intents.authenticate(str(intent["id"]), Params(), body,
                                                     {"Authorization": f"Bearer {OWN_KEY}"})
            return self._after(session, *answered(answer))

    async def _payable(self, session_id: str) -> tuple[CheckoutSession | None, Attempt]:
        """The open session, or None and why it takes no payment (missing, complete, expired — now, if due)."""
        session = await self.checkout.current(session_id)
        if session is None:
            return None, Attempt("missing")
        return (session, Attempt("form", session)) if session.is_open else (None, Attempt("closed", session))

    def _after(self, session: CheckoutSession, status: int, body: dict[str, Any]) -> Attempt:
        """The page's next step from the intent's answer to a confirmation or an authentication."""
        error = body.get("error") or body.get("last_payment_error") or {}
        if error.get("code") == "payment_intent_authentication_failure":
            error = {"message": AUTHENTICATION_FAILED}
        if status == 200 and body.get("status") == "succeeded":
            self.checkout.complete(session)
            return Attempt("paid", session)
        if status == 200 and body.get("status") == "requires_action":
            return Attempt("challenge", session)
        return Attempt("declined", session, error.get("message") or NOT_STARTED)

    async def _intent(self, session: CheckoutSession) -> dict[str, Any] | None:
        """The session's intent, made at the first attempt (and again if localstripe lost it)."""
        if (found := await self.checkout.read_intent(session)) is not None:
            return found
        params = Params([("amount", str(session.amount_total)), ("currency", session.currency),
                         *((f"metadata[{key}]", value) for key, value in session.intent_metadata.items()),
                         *([("receipt_email", session.receipt_email)] if session.receipt_email else [])])
        status, made = answered(await self.intents.create(params, f"checkout-{session.id}"))
        if status != 200:
            log.warning("%s: the intent was not made (%d %s)", session.id, status, made.get("error"))
            return None
        session.payment_intent = str(made["id"])
        self.checkout.state.changed()
        return made


PAGE_PAYMENT = web.AppKey("page_payment", PagePayment)
