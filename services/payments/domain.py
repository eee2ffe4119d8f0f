"""Payment rules: what a PaymentIntent's state means for its order, and when a change is announced.

Stripe's objects arrive here as plain dicts (``to_dict()`` or a webhook's JSON); no SDK, ORM or
broker is imported. An intent's *outcome* is the shop's reading of its status; each newly
reached outcome is announced once, whoever told us first: the answer to our own call or a
webhook. A finished intent (succeeded, canceled) never moves again, so a late or replayed
report of an earlier state changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cartwheel.contracts.payments import (
    PaymentCanceled,
    PaymentEvent,
    PaymentFailed,
    PaymentRequiresAction,
    PaymentSucceeded,
)
from cartwheel.money import from_stripe

Outcome = Literal["succeeded", "failed", "canceled", "requires_action"]
FINISHED = frozenset({"succeeded", "canceled"})
INTENT_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.requires_action",
    }
)
CHARGE_REFUNDED = "charge.refunded"
DISPUTE_CREATED = "charge.dispute.created"
DISPUTE_CLOSED = "charge.dispute.closed"
DISPUTE_EVENTS = frozenset({DISPUTE_CREATED, DISPUTE_CLOSED})
DISPUTE_WON = frozenset({"won", "warning_closed"})
"""A closed dispute's statuses that leave the money with the shop (an inquiry that closed without a chargeback)."""
REFUND_EVENTS = frozenset({"refund.updated", "refund.failed", "charge.refund.updated"})
CHECKOUT_EVENTS = frozenset({"checkout.session.completed", "checkout.session.expired"})
"""A hosted checkout page paid (its intent is made then) or closed unpaid."""
KNOWN_EVENTS = INTENT_EVENTS | DISPUTE_EVENTS | REFUND_EVENTS | CHECKOUT_EVENTS | {CHARGE_REFUNDED}
"""The event types the webhook metric names; any other is counted as "other" (the label set stays small)."""
REFUND_LOST = frozenset({"failed", "canceled"})
"""A refund's statuses that mean the money did not go back (after Stripe first took the request)."""
EVENT_BY_OUTCOME: dict[Outcome, type[PaymentEvent]] = {
    "succeeded": PaymentSucceeded,
    "failed": PaymentFailed,
    "canceled": PaymentCanceled,
    "requires_action": PaymentRequiresAction,
}
DECLINED = "the payment failed"


@dataclass(frozen=True)
class IntentSnapshot:
    """What Stripe said about a PaymentIntent at one moment."""

    id: str
    order_id: str | None
    tenant: str | None
    amount_cents: int
    currency: str
    status: str
    client_secret: str | None = None
    last_error: str | None = None
    amount_received: int | None = None
    """Stripe's ``amount_received`` (a charge's amount for a refunded charge); None where it does not say."""


def intent_key(order_id: str) -> str:
    return f"order-{order_id}"


def refund_key(order_id: str) -> str:
    return f"refund-{order_id}"


def snapshot(intent: Mapping[str, Any]) -> IntentSnapshot:
    """Read a PaymentIntent (as Stripe answered a call, or retrieved for one of its events)."""
    metadata = intent.get("metadata") or {}
    currency = str(intent["currency"]).upper()
    error = intent.get("last_payment_error") or {}
    message = error.get("message") if isinstance(error, Mapping) else None
    return IntentSnapshot(
        id=str(intent["id"]),
        order_id=metadata.get("order_id"),
        tenant=metadata.get("tenant"),
        amount_cents=from_stripe(int(intent["amount"]), currency),
        currency=currency,
        status=str(intent["status"]),
        client_secret=intent.get("client_secret"),
        last_error=message or (DECLINED if error else None),
        amount_received=stripe_amount(intent, "amount_received", currency),
    )


def refunded_intent(charge: Mapping[str, Any]) -> IntentSnapshot | None:
    """The intent a refunded charge belongs to, as far as the charge tells (a refund implies it succeeded)."""
    intent_id = payment_intent_of(charge)
    if intent_id is None:
        return None
    metadata = charge.get("metadata") or {}
    currency = str(charge["currency"]).upper()
    return IntentSnapshot(
        id=intent_id,
        order_id=metadata.get("order_id"),
        tenant=metadata.get("tenant"),
        amount_cents=from_stripe(int(charge["amount"]), currency),
        currency=currency,
        status="succeeded",
        amount_received=stripe_amount(charge, "amount_captured", currency),
    )


def stripe_amount(stripe_object: Mapping[str, Any], field: str, currency: str | None = None) -> int | None:
    """An amount field of a Stripe object in the shop's units (``currency``: the object's own by default)."""
    value = stripe_object.get(field)
    if value is None:
        return None
    return from_stripe(int(value), currency or str(stripe_object["currency"]).upper())


def intent_of(kind: str, subject: Mapping[str, Any]) -> str | None:
    """The PaymentIntent an event's object is about: the object itself, or a charge's, dispute's or refund's."""
    if kind in INTENT_EVENTS:
        found = subject.get("id")
        return found if isinstance(found, str) else None
    return payment_intent_of(subject)


def payment_intent_of(charge: Mapping[str, Any]) -> str | None:
    intent = charge.get("payment_intent")
    if isinstance(intent, Mapping):  # expanded
        intent = intent.get("id")
    return str(intent) if intent else None


def received(snap: IntentSnapshot) -> tuple[int, str]:
    """What a succeeded intent took in: ``amount_received`` where Stripe gives it, else its amount (the
    embedded server gives none)."""
    return (snap.amount_cents if snap.amount_received is None else snap.amount_received), snap.currency


def outcome(status: str, last_error: str | None) -> Outcome | None:
    """The outcome an intent in ``status`` stands for; None while it still waits for the buyer."""
    if status in ("succeeded", "canceled", "requires_action"):
        return status  # type: ignore[return-value]
    if status == "requires_payment_method" and last_error:
        return "failed"
    return None


def accepts(current: str, reported: str) -> bool:
    """Whether a stored intent in ``current`` takes the ``reported`` status: a finished intent stays as it is."""
    return current not in FINISHED or current == reported


def newly_reached(before: Outcome | None, after: Outcome | None) -> Outcome | None:
    """The outcome to announce when an intent moves from ``before`` to ``after``, if any."""
    return after if after is not None and after != before else None
