"""The Stripe webhook intake over a fake bus: the raw body and signature reach payments untouched."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cartwheel.contracts.payments import StripeWebhook
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.testing import FakeBus
from services.gateway.webhooks import MAX_WEBHOOK_BODY
from tests.unit.test_gateway_cart import SECRET, refuse

SIGNATURE = "t=1767225600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
# Stripe signs these bytes: spacing, key order, escapes and unicode must arrive as they are.
BODY = (
    '{\n  "id": "evt_1",  "type":"payment_intent.succeeded",\r\n\t"data": {"object": {"id": "pi_1", '
    '"description": "Caf\u00e9 \u2603 \\u00e9 \U0001f6d2 \u2028 end", "amount": 1.0e3}}}\n\n  '
).encode()


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus({StripeWebhook: lambda message: {"event_id": "evt_1", "type": "x", "duplicate": False}})


@pytest.fixture
def client(bus: FakeBus) -> FlaskClient:
    return create_app(Settings(admin_token="t", secret=SECRET, tenant="shop-1"), bus).test_client()


def deliver(client: FlaskClient, body: bytes = BODY, signature: str | None = SIGNATURE, **options: Any) -> TestResponse:
    headers = {"Stripe-Signature": signature} if signature is not None else {}
    headers |= options.pop("headers", {})
    return client.post("/webhooks/stripe", data=body, headers=headers, content_type="application/json", **options)


def test_the_body_reaches_payments_byte_for_byte(client: FlaskClient, bus: FakeBus) -> None:
    response = deliver(client, headers={"Cookie": "session=whatever"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"received": True, "duplicate": False}
    assert "Set-Cookie" not in response.headers
    (message,) = bus.sent
    assert isinstance(message, StripeWebhook)
    assert message.payload.encode("utf-8") == BODY and message.signature == SIGNATURE
    assert message.tenant == "shop-1"
    over_the_wire = StripeWebhook.model_validate_json(message.model_dump_json())
    assert over_the_wire.payload.encode("utf-8") == BODY


def test_a_body_that_is_not_json_is_forwarded_too(client: FlaskClient, bus: FakeBus) -> None:
    body = b"\xef\xbb\xbfnot json at all \x00"  # payments refuses it: its signature cannot verify
    assert deliver(client, body).status_code == 200
    assert bus.sent[0].payload.encode("utf-8") == body  # type: ignore[attr-defined]


def test_a_replay_is_200_and_says_duplicate(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[StripeWebhook] = lambda message: {"event_id": "evt_1", "type": "x", "duplicate": True}
    response = deliver(client)
    assert response.status_code == 200 and response.get_json() == {"received": True, "duplicate": True}


@pytest.mark.parametrize("signature", [None, ""])
def test_no_signature_is_400_without_asking_payments(client: FlaskClient, bus: FakeBus, signature: str | None) -> None:
    response = deliver(client, signature=signature)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_signature"
    assert bus.sent == []


def test_a_signature_payments_refuses_is_400(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[StripeWebhook] = refuse(DomainError("no valid signature", code="invalid_signature"))
    response = deliver(client)
    assert response.status_code == 400
    assert response.get_json() == {"error": {"code": "invalid_signature", "message": "no valid signature"}}


def test_silent_payments_is_503_so_stripe_retries(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[StripeWebhook] = refuse(ServiceUnavailable("payments.webhooks.stripe", "no answer"))
    response = deliver(client)
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_a_body_that_is_not_utf8_is_400(client: FlaskClient, bus: FakeBus) -> None:
    response = deliver(client, b'{"id": "evt_\xff"}')
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"
    assert bus.sent == []


def test_a_mebibyte_is_the_limit(client: FlaskClient, bus: FakeBus) -> None:
    assert deliver(client, b" " * MAX_WEBHOOK_BODY).status_code == 200
    response = deliver(client, b" " * (MAX_WEBHOOK_BODY + 1))
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "payload_too_large"
    assert len(bus.sent) == 1


# Of unknown length, a body that fills the limit is refused too (Werkzeug cannot tell it from a longer one).
@pytest.mark.parametrize(("size", "status"), [(MAX_WEBHOOK_BODY - 1, 200), (MAX_WEBHOOK_BODY + 1, 413)])
def test_a_chunked_body_has_the_same_limit(client: FlaskClient, bus: FakeBus, size: int, status: int) -> None:
    body = io.BytesIO(b" " * size)
    chunked = {"wsgi.input": body, "wsgi.input_terminated": True, "CONTENT_LENGTH": ""}
    assert deliver(client, environ_overrides=chunked).status_code == status
    assert len(bus.sent) == (status == 200)


def test_the_webhook_route_is_documented(client: FlaskClient) -> None:
    operation = client.get("/openapi.json").get_json()["paths"]["/webhooks/stripe"]["post"]
    assert {"200", "400", "413", "503"} <= set(operation["responses"])
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert schema.endswith("/Received")
