"""Payment rules: reading Stripe's objects, what a status means for the order, when a change is announced."""

from __future__ import annotations

import pytest

from cartwheel.contracts.payments import PaymentFailed, PaymentSucceeded
from services.payments import domain


def intent(**fields: object) -> dict[str, object]:
    return {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 1250,
        "currency": "eur",
        "status": "requires_payment_method",
        "client_secret": "pi_1_secret_x",
        "metadata": {"order_id": "o-1", "tenant": "shop"},
        "last_payment_error": None,
        **fields,
    }


def test_snapshot_reads_order_amount_and_an_upper_case_currency() -> None:
    snap = domain.snapshot(intent())
    assert (snap.id, snap.order_id, snap.tenant) == ("pi_1", "o-1", "shop")
    assert (snap.amount_cents, snap.currency, snap.status, snap.last_error) == (
        1250,
        "EUR",
        "requires_payment_method",
        None,
    )


def test_snapshot_of_a_failure_always_carries_a_reason() -> None:
    declined = intent(last_payment_error={"message": "Your card was declined.", "code": "card_declined"})
    assert domain.snapshot(declined).last_error == "Your card was declined."
    assert domain.snapshot(intent(last_payment_error={"code": "x"})).last_error == domain.DECLINED
    assert domain.snapshot(intent(metadata={})).order_id is None


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("requires_payment_method", None, None),
        ("requires_payment_method", "declined", "failed"),
        ("requires_confirmation", None, None),
        ("processing", None, None),
        ("requires_action", None, "requires_action"),
        ("succeeded", "an old decline", "succeeded"),
        ("canceled", None, "canceled"),
    ],
)
def test_outcome_of_each_status(status: str, error: str | None, expected: str | None) -> None:
    assert domain.outcome(status, error) == expected


def test_a_finished_intent_takes_no_other_status() -> None:
    assert domain.accepts("requires_payment_method", "succeeded")
    assert domain.accepts("requires_action", "requires_payment_method")
    assert domain.accepts("succeeded", "succeeded")
    assert not domain.accepts("succeeded", "requires_payment_method")
    assert not domain.accepts("canceled", "succeeded")


def test_only_a_newly_reached_outcome_is_announced() -> None:
    assert domain.newly_reached(None, "succeeded") == "succeeded"
    assert domain.newly_reached("failed", "succeeded") == "succeeded"
    assert domain.newly_reached("succeeded", "succeeded") is None
    assert domain.newly_reached("failed", "failed") is None
    assert domain.newly_reached("requires_action", None) is None
    assert domain.EVENT_BY_OUTCOME["succeeded"] is PaymentSucceeded
    assert domain.EVENT_BY_OUTCOME["failed"] is PaymentFailed


def test_a_refunded_charge_names_a_succeeded_intent() -> None:
    charge = {"id": "ch_1", "payment_intent": "pi_9", "amount": 700, "currency": "usd", "metadata": {"order_id": "o-9"}}
    snap = domain.refunded_intent(charge)
    assert snap is not None
    assert (snap.id, snap.order_id, snap.status, snap.amount_cents, snap.currency) == (
        "pi_9",
        "o-9",
        "succeeded",
        700,
        "USD",
    )
    assert domain.refunded_intent({**charge, "payment_intent": {"id": "pi_9"}}).id == "pi_9"  # type: ignore[union-attr]
    assert domain.refunded_intent({**charge, "payment_intent": None}) is None


def test_idempotency_keys_are_derived_from_the_order() -> None:
    assert domain.intent_key("o-1") == "order-o-1"
    assert domain.refund_key("o-1") == "refund-o-1"
