"""Objects as Stripe shows them: localstripe's answer with the stand-in's notes laid over it (pure)."""

from __future__ import annotations

from typing import Any

from cartwheel.paymentserver.state import IntentNotes
from cartwheel.paymentserver.testcards import CardError, TestCard

INTENT_FIELDS = ("automatic_payment_methods", "description", "receipt_email", "statement_descriptor_suffix")
"""Fields Stripe always shows on an intent (null when unset) and localstripe does not know."""

AUTHENTICATION_FAILED = ("The provided PaymentMethod has failed authentication. You can provide payment_method_data "
                         "or a new PaymentMethod to attempt to fulfill this PaymentIntent again.")


def present_intent(intent: dict[str, Any], notes: IntentNotes | None) -> dict[str, Any]:
    """The intent with the parameters kept for it and its last decline, until a later confirmation clears it."""
    shown = {**dict.fromkeys(INTENT_FIELDS), **intent}
    if notes is None:
        return shown
    shown |= notes.params
    if notes.last_payment_error is not None:
        shown["last_payment_error"] = notes.last_payment_error
        if shown.get("payment_method") == notes.failed_method and shown.get("status") == "requires_confirmation":
            shown |= {"payment_method": None, "status": "requires_payment_method"}  # as after a decline at Stripe
    return shown


def present_method(method: dict[str, Any], card: TestCard | None) -> dict[str, Any]:
    """A PaymentMethod with its test card's brand, funding and last digits (localstripe says visa for all)."""
    if card is None or not isinstance(method.get("card"), dict):
        return method
    return {**method, "card": {**method["card"], "brand": card.brand, "funding": card.funding,
                               "last4": card.number[-4:]}}


def card_error(error: CardError, method: dict[str, Any]) -> dict[str, Any]:
    """``error`` / ``last_payment_error`` for a decline of ``method``, as Stripe words it."""
    found = {"type": "card_error", "code": error.code, "decline_code": error.decline_code, "message": error.message,
             "doc_url": f"https://stripe.com/docs/error-codes/{error.code.replace('_', '-')}", "payment_method": method}
    return found | ({"param": error.param} if error.param else {})


def authentication_error(method: dict[str, Any] | None) -> dict[str, Any]:
    """``last_payment_error`` after the buyer failed 3-D Secure."""
    return {"type": "invalid_request_error", "code": "payment_intent_authentication_failure",
            "message": AUTHENTICATION_FAILED, "payment_method": method,
            "doc_url": "https://stripe.com/docs/error-codes/payment-intent-authentication-failure"}
