"""Webhook signatures, verified with the Stripe SDK's own signing: what passes and what is invalid_signature."""

from __future__ import annotations

import json
import time

import pytest
import stripe

from cartwheel.errors import DomainError
from services.payments.stripe_api import verify_webhook

SECRET = "whsec_unit"
EVENT = {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"}}}


def sign(payload: str, secret: str = SECRET, at: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(payload, secret, at)


def refusal(payload: str, signature: str, secret: str | None = SECRET) -> DomainError:
    with pytest.raises(DomainError) as caught:
        verify_webhook(payload, signature, secret)
    assert caught.value.code == "invalid_signature"
    return caught.value


def test_a_signed_event_verifies_and_parses() -> None:
    payload = json.dumps(EVENT)
    assert verify_webhook(payload, sign(payload), SECRET) == EVENT
    assert verify_webhook(payload, sign(payload, at=int(time.time()) - 290), SECRET)["id"] == "evt_1"


def test_wrong_secret_changed_body_and_stale_timestamp_are_refused() -> None:
    payload = json.dumps(EVENT)
    refusal(payload, sign(payload, secret="whsec_other"))
    refusal(payload.replace("pi_1", "pi_2"), sign(payload))
    refusal(payload, sign(payload, at=int(time.time()) - 301))
    refusal(payload, "")
    refusal(payload, "t=abc,v1=zz")


def test_without_a_configured_secret_nothing_verifies() -> None:
    payload = json.dumps(EVENT)
    assert "secret" in refusal(payload, sign(payload), secret=None).message
    assert "secret" in refusal(payload, sign(payload), secret="").message


def test_a_signed_body_that_is_not_an_event_is_refused() -> None:
    for payload in ("not json", json.dumps([1, 2]), json.dumps({"id": "evt_1"})):
        refusal(payload, sign(payload))
