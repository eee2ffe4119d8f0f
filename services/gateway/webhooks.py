"""Stripe's webhook intake: the body goes to payments exactly as it came, with its ``Stripe-Signature``.

The signature covers the raw bytes, so the body is never parsed or re-encoded here; payments verifies
it and records each Stripe event once (a replay is answered 200, ``duplicate``, and changes nothing).
No session or cookie is looked at: Stripe calls server to server.
"""

from __future__ import annotations

from flask import request
from pydantic import BaseModel, Field

from cartwheel.contracts.payments import StripeWebhook, WebhookOutcome
from services.gateway.api import Header, Routes
from services.gateway.cart import NO_STORE
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.errors import ApiError

routes = Routes(tag="webhooks")

SIGNATURE_HEADER = "Stripe-Signature"
MAX_WEBHOOK_BODY = 1024 * 1024  # Stripe's events are far smaller


class Received(BaseModel):
    received: bool = True
    duplicate: bool = Field(description="Stripe sent this event before: nothing happened this time.")


@routes.post(
    "/webhooks/stripe",
    summary="Stripe events (raw JSON body, verified by its Stripe-Signature header); 200 on a replay",
    response=Received,
    errors=(400, 413, 503),
    headers=(Header(SIGNATURE_HEADER, "Stripe's signature of the raw body; 400 when missing, bad or stale.",
                    required=True),),
    raw_body=("application/json",),
)
def stripe_webhook() -> tuple[Received, dict[str, str]]:
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not signature:
        raise ApiError(400, "invalid_signature", f"the {SIGNATURE_HEADER} header is missing")
    request.max_content_length = MAX_WEBHOOK_BODY
    raw = request.get_data(cache=False)
    request.stream.read(1)  # a chunked body stops at the limit; reading on raises 413
    try:
        payload = raw.decode("utf-8")  # strict: encodes back to the very same bytes
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the body is not UTF-8") from None
    message = StripeWebhook(tenant=current_tenant(), payload=payload, signature=signature)
    outcome = WebhookOutcome.model_validate(gateway().bus.request(message))
    return Received(duplicate=outcome.duplicate), NO_STORE
