"""The embedded payment server (localstripe behind the Stripe stand-in) as the Stripe SDK and a browser see it."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from cartwheel.localstripe import LocalStripe, bootstrap_argv, register_webhook, start_localstripe, wait_ready
from cartwheel.natsserver import spawn
from cartwheel.paymentserver.testcards import CARDS, TestCard
from tests.stripe_fixtures import WebhookEndpoint

KEY = "sk_test_standin_tests"
PUBLISHABLE = "pk_test_standin_tests"
SECRET_KEY = {"Authorization": f"Bearer {KEY}"}
SECRET = "whsec_standin_tests"
METHODS = [(method, card) for card in CARDS for method in card.payment_methods]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    started = start_localstripe(log_path=tmp_path_factory.mktemp("payment-server") / "server.log")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(server: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0)


class Receiver(WebhookEndpoint):
    """A webhook endpoint: keeps every delivery whose Stripe-Signature verifies with :data:`SECRET`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        super().__init__(self._receive)

    def _receive(self, body: bytes, signature: str) -> int:
        payload = body.decode()
        try:
            stripe.WebhookSignature.verify_header(payload, signature, SECRET, 300)
            self.events.append(json.loads(payload))
        except stripe.SignatureVerificationError:
            self.refused += 1
        return 200

    def types(self, intent_id: str, expect: int, timeout: float = 10.0) -> list[str]:
        """The types of the events about ``intent_id``, once ``expect`` have come (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(found := self.about(intent_id)) < expect and time.monotonic() < deadline:
            time.sleep(0.05)
        return [event["type"] for event in found]

    def about(self, intent_id: str) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event["data"]["object"].get("id") == intent_id]


@pytest.fixture
def receiver(server: LocalStripe) -> Iterator[Receiver]:
    endpoint, webhook_id = Receiver(), f"test-{uuid.uuid4().hex[:8]}"
    register_webhook(server.url, endpoint.url, SECRET, ["payment_intent.succeeded", "payment_intent.payment_failed"],
                     webhook_id=webhook_id)
    yield endpoint
    register_webhook(server.url, endpoint.url, SECRET, ["cartwheel.none"], webhook_id=webhook_id)  # off
    endpoint.server.shutdown()


def new_intent(client: stripe.StripeClient, **params: Any) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(params={"amount": 1500, "currency": "eur", **params})


def http(server: LocalStripe, method: str, path: str, form: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A raw call, as a browser's script makes it: status, JSON body, headers."""
    data = urllib.parse.urlencode(form).encode() if form is not None and method != "GET" else None
    query = f"?{urllib.parse.urlencode(form)}" if form is not None and method == "GET" else ""
    request = urllib.request.Request(f"{server.url}{path}{query}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"{}"), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def authenticate(server: LocalStripe, intent: stripe.PaymentIntent, success: bool) -> tuple[int, dict[str, Any]]:
    """The bank's 3-D Secure page answering, as localstripe's stripe.js reports it."""
    form = {"key": PUBLISHABLE, "client_secret": intent.client_secret or "", "success": str(success).lower()}
    status, body, _ = http(server, "POST", f"/v1/payment_intents/{intent.id}/_authenticate", form)
    return status, body


def expected_status(card: TestCard) -> str:
    return {"succeeds": "succeeded", "requires_action": "requires_action",
            "requires_action_then_declined": "requires_action"}[card.outcome]


# -- each test payment method ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "card"), METHODS, ids=[method for method, _ in METHODS])
def test_each_test_payment_method_answers_as_at_stripe(client: stripe.StripeClient, method: str,
                                                        card: TestCard) -> None:
    intent = new_intent(client)
    if card.outcome != "declined":
        confirmed = client.v1.payment_intents.confirm(intent.id, params={"payment_method": method})
        assert confirmed.status == expected_status(card) and confirmed.last_payment_error is None
        return
    assert card.error is not None
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": method})
    error = declined.value.error
    assert declined.value.http_status == 402
    assert (error.type, error.code, error.decline_code, error.message) == (
        "card_error", card.error.code, card.error.decline_code, card.error.message)
    assert error.payment_intent is not None and error.payment_intent.id == intent.id
    assert error.payment_intent.status == "requires_payment_method"
    assert error.payment_intent.last_payment_error.decline_code == card.error.decline_code
    assert error.payment_method is not None and error.payment_method.card.last4 == card.number[-4:]
    again = client.v1.payment_intents.retrieve(intent.id)
    assert (again.status, again.payment_method, again.last_payment_error.code) == (
        "requires_payment_method", None, card.error.code)


def test_setting_the_method_then_confirming_declines_the_same_way(client: stripe.StripeClient) -> None:
    """What the payments service does: update, then confirm without parameters."""
    intent = new_intent(client)
    client.v1.payment_intents.update(intent.id, params={"payment_method": "pm_card_chargeDeclinedExpiredCard"})
    assert client.v1.payment_intents.retrieve(intent.id).status == "requires_confirmation"
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.confirm(intent.id)
    assert (declined.value.code, declined.value.error.param) == ("expired_card", "exp_month")


def test_create_with_confirm_declines_with_the_intent_it_made(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError) as declined:
        new_intent(client, payment_method="pm_card_visa_chargeDeclined", confirm=True)
    made = declined.value.error.payment_intent
    assert made is not None and made.id.startswith("pi_") and made.status == "requires_payment_method"
    paid = new_intent(client, payment_method="pm_card_visa", confirm=True)
    assert paid.status == "succeeded"


def test_a_second_confirmation_after_a_decline_succeeds_and_the_webhooks_say_both(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    intent = new_intent(client)
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_chargeDeclined"})
    paid = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert (paid.status, paid.last_payment_error) == ("succeeded", None)
    assert client.v1.payment_intents.retrieve(intent.id).last_payment_error is None
    assert receiver.types(intent.id, expect=2) == ["payment_intent.payment_failed", "payment_intent.succeeded"]
    failed = receiver.about(intent.id)[0]
    assert failed["id"].startswith("evt_") and failed["object"] == "event" and failed["livemode"] is False
    assert failed["data"]["object"]["last_payment_error"]["decline_code"] == "generic_decline"
    assert receiver.refused == 0


def test_a_manual_capture_after_a_decline(client: stripe.StripeClient) -> None:
    intent = new_intent(client, capture_method="manual")
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_chargeCustomerFail"})
    held = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_mastercard"})
    assert held.status == "requires_capture"
    assert client.v1.payment_intents.capture(intent.id).status == "succeeded"


# -- 3-D Secure -----------------------------------------------------------------------------------


def test_3d_secure_passed_pays(server: LocalStripe, client: stripe.StripeClient, receiver: Receiver) -> None:
    intent = new_intent(client)
    pending = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_authenticationRequired",
                                                                   "return_url": "http://127.0.0.1/back"})
    assert pending.status == "requires_action"
    status, body = authenticate(server, pending, success=True)
    assert (status, body["status"]) == (200, "succeeded")
    assert receiver.types(intent.id, expect=1) == ["payment_intent.succeeded"]


def test_3d_secure_as_localstripes_stripe_js_reports_it(server: LocalStripe, client: stripe.StripeClient) -> None:
    """JSON as text/plain, ``success`` in the query."""
    intent = new_intent(client)
    pending = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_threeDSecureRequired"})
    body = json.dumps({"key": PUBLISHABLE, "client_secret": pending.client_secret}).encode()
    request = urllib.request.Request(f"{server.url}/v1/payment_intents/{intent.id}/_authenticate?success=true",
                                     data=body, headers={"Content-Type": "text/plain;charset=UTF-8"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["status"] == "succeeded"


def test_3d_secure_failed_is_reported_then_another_card_pays(
    server: LocalStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    intent = new_intent(client)
    pending = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_threeDSecure2Required"})
    status, body = authenticate(server, pending, success=False)
    assert (status, body["status"]) == (200, "requires_payment_method")
    failed = client.v1.payment_intents.retrieve(intent.id)
    assert failed.last_payment_error.code == "payment_intent_authentication_failure"
    assert failed.last_payment_error.payment_method.card.last4 == "3220"
    assert client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"}).status == "succeeded"
    assert receiver.types(intent.id, expect=2) == ["payment_intent.payment_failed", "payment_intent.succeeded"]


def test_a_card_that_declines_after_3d_secure(server: LocalStripe, client: stripe.StripeClient,
                                              receiver: Receiver) -> None:
    intent = new_intent(client)
    method = "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds"
    pending = client.v1.payment_intents.confirm(intent.id, params={"payment_method": method})
    status, body = authenticate(server, pending, success=True)
    assert (status, body["status"], body["last_payment_error"]["decline_code"]) == (
        200, "requires_payment_method", "insufficient_funds")
    assert receiver.types(intent.id, expect=1) == ["payment_intent.payment_failed"]
    assert client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"}).status == "succeeded"


# -- what localstripe refuses ---------------------------------------------------------------------


def test_parameters_localstripe_refuses_are_kept_and_shown(client: stripe.StripeClient) -> None:
    intent = new_intent(client, automatic_payment_methods={"enabled": True}, receipt_email="buyer@example.test",
                        description="Order 42", statement_descriptor_suffix="ORDER 42", metadata={"order_id": "42"})
    assert intent.automatic_payment_methods.enabled is True
    assert (intent.receipt_email, intent.description, intent.statement_descriptor_suffix) == (
        "buyer@example.test", "Order 42", "ORDER 42")
    again = client.v1.payment_intents.retrieve(intent.id)
    assert (again.receipt_email, again.automatic_payment_methods.enabled, again.metadata["order_id"]) == (
        "buyer@example.test", True, "42")
    listed = client.v1.payment_intents.list(params={"limit": 100000})
    assert [pi.receipt_email for pi in listed.data if pi.id == intent.id] == ["buyer@example.test"]
    client.v1.payment_intents.update(intent.id, params={"description": "Order 42, again"})
    paid = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa",
                                                                "return_url": "http://127.0.0.1/back"})
    assert (paid.status, paid.description, paid.receipt_email) == ("succeeded", "Order 42, again",
                                                                   "buyer@example.test")
    plain = new_intent(client)
    assert plain.receipt_email is None and plain.automatic_payment_methods is None
    assert client.v1.payment_intents.update(intent.id, params={"description": ""}).description is None  # unset


def test_a_missing_intent_is_404_and_leaves_the_test_methods_as_they_were(client: stripe.StripeClient) -> None:
    visa = client.v1.payment_methods.retrieve("pm_card_visa").id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.confirm("pi_missing", params={"payment_method": "pm_card_visa"})
    assert missing.value.http_status == 404
    assert client.v1.payment_methods.retrieve("pm_card_visa").id == visa  # not made again


def test_a_method_attaches_unless_its_card_declines(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(params={"email": "buyer@example.test"})
    attached = client.v1.payment_methods.attach("pm_card_chargeCustomerFail", params={"customer": customer.id})
    assert attached.customer == customer.id
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_methods.attach("pm_card_chargeDeclinedInsufficientFunds", params={"customer": customer.id})
    assert declined.value.error.decline_code == "insufficient_funds"
    assert client.v1.payment_methods.retrieve("pm_card_mastercard").card.brand == "mastercard"


# -- the browser ----------------------------------------------------------------------------------


def card_form(number: str) -> dict[str, str]:
    return {"key": PUBLISHABLE, "type": "card", "card[number]": number, "card[exp_month]": "4",
            "card[exp_year]": "2031", "card[cvc]": "321", "payment_user_agent": "stripe.js/standin"}


def test_a_browser_pays_with_the_publishable_key_and_the_client_secret(server: LocalStripe,
                                                                      client: stripe.StripeClient) -> None:
    intent = new_intent(client)
    path = f"/v1/payment_intents/{intent.id}"
    status, declining, _ = http(server, "POST", "/v1/payment_methods", card_form("4000 0000 0000 9995"))
    assert status == 200 and declining["card"]["last4"] == "9995"
    confirm = {"key": PUBLISHABLE, "client_secret": intent.client_secret or "", "return_url": "http://127.0.0.1/"}
    status, body, _ = http(server, "POST", f"{path}/confirm", {**confirm, "payment_method": declining["id"]})
    assert (status, body["error"]["decline_code"], body["error"]["payment_intent"]["status"]) == (
        402, "insufficient_funds", "requires_payment_method")
    status, good, _ = http(server, "POST", "/v1/payment_methods", card_form("5555555555554444"))
    assert (status, good["card"]["brand"]) == (200, "mastercard")
    status, body, _ = http(server, "POST", f"{path}/confirm", {**confirm, "payment_method": good["id"]})
    assert (status, body["status"]) == (200, "succeeded")
    status, body, _ = http(server, "GET", path, {"key": PUBLISHABLE, "client_secret": intent.client_secret or ""})
    assert (status, body["status"], body["last_payment_error"]) == (200, "succeeded", None)


def test_a_browser_without_the_intents_secret_sees_nothing(server: LocalStripe, client: stripe.StripeClient) -> None:
    intent, other = new_intent(client), new_intent(client)
    path = f"/v1/payment_intents/{intent.id}"
    wrong = {"key": PUBLISHABLE, "client_secret": other.client_secret or ""}
    assert http(server, "GET", path, wrong)[0] == 404
    assert http(server, "GET", path, {"key": PUBLISHABLE})[0] == 404
    status, body, _ = http(server, "POST", f"{path}/confirm", {**wrong, "payment_method": "pm_card_visa"})
    assert (status, body["error"]["param"]) == (404, "client_secret")
    assert client.v1.payment_intents.retrieve(intent.id).status == "requires_payment_method"  # nothing changed
    assert http(server, "GET", path)[0] == 401  # no key
    assert http(server, "POST", "/v1/payment_intents", {"key": PUBLISHABLE, "amount": "5", "currency": "eur"})[0] == 401
    assert http(server, "POST", "/v1/payment_methods", {**card_form("4242424242424242"), "key": "nope"})[0] == 401


def test_a_browser_may_send_json(server: LocalStripe) -> None:
    body = {"key": PUBLISHABLE, "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 4, "exp_year": 2031, "cvc": "321"}}
    request = urllib.request.Request(f"{server.url}/v1/payment_methods", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Origin": "http://127.0.0.1:8080"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8080"
        assert json.loads(answer.read())["card"]["last4"] == "4242"


# -- rate limit, state, restarts ------------------------------------------------------------------


def test_above_the_rate_limit_it_answers_429_and_counts_them(tmp_path: Path) -> None:
    server = start_localstripe(rate_limit=20, log_path=tmp_path / "server.log")
    try:
        client = stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0)
        admitted: list[float] = []
        limited: list[dict[str, str]] = []
        for _ in range(60):
            status, body, headers = http(server, "GET", "/v1/payment_intents", headers=SECRET_KEY)
            if status == 429:
                assert body["error"] == {"type": "invalid_request_error", "code": "rate_limit",
                                         "message": "Too many requests hit the API too quickly. We recommend an "
                                                    "exponential backoff of your requests."}
                limited.append(headers)
            else:
                assert status == 200
                admitted.append(time.monotonic())
        assert len(limited) >= 30 and all(int(h["Retry-After"]) >= 1 for h in limited)
        assert all(later - earlier >= 1.0 for earlier, later in zip(admitted, admitted[20:], strict=False))
        with pytest.raises(stripe.RateLimitError):
            client.v1.payment_intents.list()
        status, stats, _ = http(server, "GET", "/_config/stats")
        assert (status, stats["rate_limit"], stats["requests"], stats["rate_limited"]) == (
            200, 20.0, 61, len(limited) + 1)
        assert stats["by_kind"]["GET /v1/payment_intents"]["rate_limited"] == len(limited) + 1
        time.sleep(int(limited[-1]["Retry-After"]))
        assert client.v1.payment_intents.list().object == "list"
        assert http(server, "DELETE", "/_config/stats")[1]["requests"] == 0
    finally:
        server.stop()


def test_the_stand_ins_state_survives_a_restart_and_is_cleared_with_localstripes(tmp_path: Path) -> None:
    state = tmp_path / "var" / "localstripe" / "state.pickle"

    def started() -> tuple[LocalStripe, stripe.StripeClient]:
        server = start_localstripe(state=state, log_path=tmp_path / "server.log")
        return server, stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0)

    server, client = started()
    try:
        intent = new_intent(client, receipt_email="buyer@example.test")
        with pytest.raises(stripe.CardError):
            client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_chargeDeclinedLostCard"})
    finally:
        server.stop()  # SIGTERM: what changed is written on the way out
    kept = state.with_name("standin.json")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    server, client = started()
    try:
        again = client.v1.payment_intents.retrieve(intent.id)
        assert (again.receipt_email, again.last_payment_error.decline_code) == ("buyer@example.test", "lost_card")
        paid = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
        assert (paid.status, paid.receipt_email) == ("succeeded", "buyer@example.test")
        assert http(server, "DELETE", "/_config/data")[0] == 200
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.payment_intents.retrieve(intent.id)
        assert new_intent(client, payment_method="pm_card_visa", confirm=True).status == "succeeded"
    finally:
        server.stop()


def test_localstripe_restarted_gets_the_webhooks_again_and_meanwhile_calls_are_502(server: LocalStripe,
                                                                                   receiver: Receiver) -> None:
    """localstripe keeps registrations in memory only; the stand-in registers them again."""
    own = start_localstripe()
    try:
        register_webhook(own.url, receiver.url, SECRET, webhook_id="restarted")
        os.kill(own.process.pid, signal.SIGKILL)
        own.process.wait(5)
        status, body, _ = http(own, "GET", "/v1/payment_intents", headers=SECRET_KEY)
        assert (status, body["error"]["type"]) == (502, "api_error")
        own.process = spawn(bootstrap_argv("127.0.0.1", own.upstream_port, None))
        wait_ready(own.process, own.upstream_url, "localstripe restarted")
        time.sleep(6)  # the stand-in registers every 5 s
        client = stripe.StripeClient(KEY, base_addresses={"api": own.url}, max_network_retries=0)
        paid = new_intent(client, payment_method="pm_card_visa", confirm=True)  # a new method: the old one is gone
        assert receiver.types(paid.id, expect=1) == ["payment_intent.succeeded"]
    finally:
        own.stop()


def test_an_intent_taking_the_accounts_methods_wants_a_return_url_to_be_confirmed(client: stripe.StripeClient) -> None:
    redirects = new_intent(client, automatic_payment_methods={"enabled": True})
    with pytest.raises(stripe.InvalidRequestError) as refused:  # as at Stripe: a redirect may be needed
        client.v1.payment_intents.confirm(redirects.id, params={"payment_method": "pm_card_visa"})
    assert refused.value.param == "return_url"
    paid = client.v1.payment_intents.confirm(
        redirects.id, params={"payment_method": "pm_card_visa", "return_url": "http://127.0.0.1/orders/x"})
    assert paid.status == "succeeded"
    no_redirects = new_intent(client, automatic_payment_methods={"enabled": True, "allow_redirects": "never"})
    assert client.v1.payment_intents.confirm(no_redirects.id, params={"payment_method": "pm_card_visa"}).status == \
        "succeeded"


def test_a_page_on_another_site_can_neither_read_the_config_nor_register_a_webhook(server: LocalStripe) -> None:
    elsewhere = {"Origin": "http://evil.test"}
    assert "Access-Control-Allow-Origin" not in http(server, "GET", "/_config/stats", headers=elsewhere)[2]
    script = urllib.request.Request(f"{server.url}/js.stripe.com/v3/", headers=elsewhere)
    with urllib.request.urlopen(script, timeout=10) as answer:  # Stripe.js and the API are for pages
        assert answer.headers["Access-Control-Allow-Origin"] == "http://evil.test"
    form = {"url": "http://evil.test/hook", "secret": "whsec_x"}
    assert http(server, "POST", "/_config/webhooks/evil", form, headers=elsewhere)[0] == 401  # a form post can't
    assert http(server, "POST", "/_config/webhooks/evil", {**form, "events[]": "cartwheel.none"},
                headers=SECRET_KEY)[0] == 200  # ... but whoever holds a secret key can
