"""Hosted checkout in the embedded payment server: Checkout Sessions through the Stripe SDK, and the hosted page
paid with HTTP form posts as a browser sends them; every event signed and verified as the shop verifies it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from cartwheel.localstripe import LocalStripe, register_webhook, start_localstripe
from tests.stripe_fixtures import WebhookEndpoint

KEY = "sk_test_checkout_tests"
SECRET = "whsec_checkout_tests"
EVENTS = ["checkout.session.completed", "checkout.session.expired", "payment_intent.succeeded"]
SUCCESS = "http://127.0.0.1:9/orders/o-1/paid?session={CHECKOUT_SESSION_ID}"
CANCEL = "http://127.0.0.1:9/cart"
VISA, DECLINED = "4242 4242 4242 4242", "4000 0000 0000 0002"


class Receiver(WebhookEndpoint):
    """A webhook endpoint keeping each delivery as it came (payload and Stripe-Signature), unverified."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str]] = []
        super().__init__(lambda body, signature: self.deliveries.append((body.decode(), signature)) or 200)

    def verified(self, object_id: str, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The ``kind`` event about ``object_id``, its signature verified with the SDK as the shop verifies it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for payload, header in list(self.deliveries):
                event = json.loads(payload)
                if event["type"] == kind and event["data"]["object"]["id"] == object_id:
                    assert stripe.WebhookSignature.verify_header(payload, header, SECRET, 300)
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no {kind} for {object_id}: {[json.loads(p)['type'] for p, _ in self.deliveries]}")

    def kinds(self, object_id: str) -> list[str]:
        return [event["type"] for event in (json.loads(p) for p, _ in list(self.deliveries))
                if event["data"]["object"]["id"] == object_id]


Started = tuple[LocalStripe, stripe.StripeClient, Receiver]


def started(log: Path, **options: Any) -> Iterator[Started]:
    server = start_localstripe(log_path=log, **options)
    receiver = Receiver()
    try:
        register_webhook(server.url, receiver.url, SECRET, EVENTS, webhook_id=f"checkout-{uuid.uuid4().hex[:8]}")
        yield server, stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0), receiver
    finally:
        server.stop()
        receiver.server.shutdown()


@pytest.fixture(scope="module")
def stripe_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """Sessions live 30 minutes at least, as at Stripe."""
    yield from started(tmp_path_factory.mktemp("checkout") / "server.log")


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """Sessions may end a second after they are made."""
    yield from started(tmp_path_factory.mktemp("checkout-short") / "server.log", min_session_seconds=1)


def new_session(client: stripe.StripeClient, key: str | None = None, **params: Any) -> stripe.checkout.Session:
    lines = [{"price_data": {"currency": "eur", "unit_amount": 1000, "product_data": {"name": "Mug"}}, "quantity": 2},
             {"price_data": {"currency": "eur", "unit_amount": 400, "product_data": {"name": "Tea"}}, "quantity": 1}]
    order = f"o-{uuid.uuid4().hex[:8]}"
    create = {"mode": "payment", "line_items": lines, "success_url": SUCCESS, "cancel_url": CANCEL,
              "client_reference_id": order, "customer_email": "buyer@example.test", "metadata": {"order_id": order},
              "payment_intent_data": {"metadata": {"order_id": order}, "receipt_email": "buyer@example.test"}}
    return client.v1.checkout.sessions.create(params={**create, **params},
                                              options={"idempotency_key": key or uuid.uuid4().hex})


def pay(session: stripe.checkout.Session, number: str, expiry: str = "12/34") -> requests.Response:
    assert session.url is not None
    return requests.post(session.url, data={"card_number": number, "expiry": expiry, "cvc": "123"},
                         allow_redirects=False, timeout=10)


def authenticate(session: stripe.checkout.Session, success: bool) -> requests.Response:
    return requests.post(f"{session.url}/authenticate", data={"success": str(success).lower()}, allow_redirects=False,
                         timeout=10)


def alert(page: requests.Response) -> str:
    """The text of the page's role=alert message."""
    start = page.text.index('role="alert"')
    return page.text[page.text.index(">", start) + 1:page.text.index("</p>", start)]


def paid_to_success(client: stripe.StripeClient, receiver: Receiver, session: stripe.checkout.Session,
                    answer: requests.Response) -> stripe.PaymentIntent:
    """The page redirected to success_url and the session is paid, with its completed event: the intent."""
    assert (answer.status_code, answer.headers["Location"]) == (303, SUCCESS.replace("{CHECKOUT_SESSION_ID}",
                                                                                     session.id))
    done = client.v1.checkout.sessions.retrieve(session.id)
    assert (done.status, done.payment_status, done.url) == ("complete", "paid", None)
    assert done.payment_intent is not None
    event = receiver.verified(session.id, "checkout.session.completed")
    assert (event["data"]["object"]["payment_intent"], event["data"]["object"]["metadata"]) == (
        done.payment_intent, {"order_id": session.client_reference_id})
    return client.v1.payment_intents.retrieve(str(done.payment_intent))


# -- the API ---------------------------------------------------------------------------------------


def test_a_session_is_made_read_and_expired_with_the_sdk(stripe_like: Started) -> None:
    server, client, receiver = stripe_like
    expires_at = int(time.time()) + 3600
    session = new_session(client, expires_at=expires_at)
    assert session.id.startswith("cs_test_") and session.object == "checkout.session"
    assert (session.status, session.payment_status, session.mode, session.payment_intent) == (
        "open", "unpaid", "payment", None)
    assert (session.amount_total, session.amount_subtotal, session.currency, session.expires_at) == (
        2400, 2400, "eur", expires_at)
    assert session.url == f"{server.url}/c/pay/{session.id}"
    read = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]})
    assert (read.customer_email, read.line_items.data[0].price.unit_amount) == ("buyer@example.test", 1000)
    lines = client.v1.checkout.sessions.line_items.list(session.id)
    assert [(item.description, item.quantity, item.amount_total) for item in lines.data] == [
        ("Mug", 2, 2000), ("Tea", 1, 400)]
    expired = client.v1.checkout.sessions.expire(session.id)
    assert (expired.status, expired.url) == ("expired", None)
    event = receiver.verified(session.id, "checkout.session.expired")
    assert event["data"]["object"]["metadata"] == {"order_id": session.client_reference_id}
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.checkout.sessions.expire(session.id)
    assert again.value.http_status == 400 and "open" in str(again.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.retrieve("cs_test_missing")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


def test_the_same_idempotency_key_gives_the_same_session(stripe_like: Started) -> None:
    _, client, _ = stripe_like
    key = f"order-{uuid.uuid4().hex}"
    first = new_session(client, key, client_reference_id="o-same", metadata={"order_id": "o-same"},
                        payment_intent_data={"metadata": {"order_id": "o-same"}})
    assert new_session(client, key, client_reference_id="o-same", metadata={"order_id": "o-same"},
                       payment_intent_data={"metadata": {"order_id": "o-same"}}).id == first.id
    with pytest.raises(stripe.IdempotencyError):
        new_session(client, key, client_reference_id="o-other")
    assert new_session(client).id != first.id


def test_what_stripe_refuses_is_refused(stripe_like: Started) -> None:
    server, client, _ = stripe_like
    with pytest.raises(stripe.InvalidRequestError) as soon:
        new_session(client, expires_at=int(time.time()) + 600)
    assert (soon.value.http_status, soon.value.param) == (400, "expires_at")
    assert "at least 30 minutes" in str(soon.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as mode:
        new_session(client, mode="subscription")
    assert mode.value.param == "mode"
    assert requests.get(f"{server.url}/v1/checkout/sessions/cs_test_x", timeout=10).status_code == 401  # no key


def test_a_session_expires_by_itself_and_says_so(short: Started) -> None:
    _, client, receiver = short
    session = new_session(client, expires_at=int(time.time()) + 2)
    event = receiver.verified(session.id, "checkout.session.expired", timeout=6)
    assert (event["data"]["object"]["status"], event["data"]["object"]["url"]) == ("expired", None)
    assert client.v1.checkout.sessions.retrieve(session.id).status == "expired"
    assert receiver.kinds(session.id) == ["checkout.session.expired"]  # once


def test_sessions_outlive_a_restart_and_are_cleared_with_the_data(tmp_path: Path) -> None:
    state = tmp_path / "var" / "localstripe" / "state.pickle"
    with start_localstripe(state=state, log_path=tmp_path / "server.log") as server:
        client = stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0)
        session = new_session(client, "kept-key")
    with start_localstripe(state=state, log_path=tmp_path / "server.log") as server:
        client = stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0)
        assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
        assert requests.delete(f"{server.url}/_config/data", timeout=10).status_code == 200
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.checkout.sessions.retrieve(session.id)


# -- the hosted page -------------------------------------------------------------------------------


def test_the_page_shows_the_order_and_a_card_form(stripe_like: Started) -> None:
    server, client, _ = stripe_like
    session = new_session(client)
    assert session.url is not None
    page = requests.get(session.url, timeout=10)
    assert (page.status_code, page.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    for shown in ("Mug", "Tea", "EUR 24.00", "buyer@example.test", '<label for="card-number">Card number</label>',
                  "Expiry (MM/YY)", ">CVC</label>", ">Pay</button>", f'<a href="{CANCEL}">Back to the shop</a>'):
        assert shown in page.text
    assert requests.get(f"{server.url}/c/pay/cs_test_missing", timeout=10).status_code == 404


def test_a_declined_card_then_a_good_one_pays_and_completes_the_session(stripe_like: Started) -> None:
    _, client, receiver = stripe_like
    session = new_session(client)
    declined = pay(session, DECLINED)
    assert (declined.status_code, alert(declined)) == (402, "Your card was declined.")
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert pay(session, "4242 4242 4242 4241").status_code == 400  # not a card number: nothing sent
    intent = paid_to_success(client, receiver, session, pay(session, VISA))
    assert (intent.status, intent.amount, intent.currency, intent.receipt_email) == (
        "succeeded", 2400, "eur", "buyer@example.test")
    assert intent.metadata["order_id"] == session.client_reference_id
    assert intent.last_payment_error is None
    assert receiver.verified(intent.id, "payment_intent.succeeded")  # localstripe's own
    again = pay(session, VISA)
    assert again.status_code == 409 and "complete" in again.text
    assert "was paid" in requests.get(str(session.url), timeout=10).text


def test_3d_secure_completed_on_the_page_pays(stripe_like: Started) -> None:
    _, client, receiver = stripe_like
    session = new_session(client)
    challenge = pay(session, "4000 0000 0000 3220")
    assert challenge.status_code == 200
    assert ">Complete authentication</button>" in challenge.text and ">Fail authentication</button>" in challenge.text
    assert ">Complete authentication</button>" in requests.get(str(session.url), timeout=10).text  # still pending
    assert paid_to_success(client, receiver, session, authenticate(session, True)).status == "succeeded"


def test_3d_secure_failed_on_the_page_says_so_then_another_card_pays(stripe_like: Started) -> None:
    _, client, receiver = stripe_like
    session = new_session(client)
    assert pay(session, "4000 0027 6000 3184").status_code == 200
    failed = authenticate(session, False)
    assert failed.status_code == 402 and "unable to authenticate" in alert(failed)
    assert ">Pay</button>" in failed.text and client.v1.checkout.sessions.retrieve(session.id).status == "open"
    after = pay(session, "4000 0084 0000 1629")  # 3-D Secure passed, then declined
    assert after.status_code == 200
    declined = authenticate(session, True)
    assert (declined.status_code, alert(declined)) == (402, "Your card was declined.")
    assert paid_to_success(client, receiver, session, pay(session, "5555 5555 5555 4444")).status == "succeeded"


def test_an_expired_sessions_page_takes_no_payment(stripe_like: Started) -> None:
    _, client, _ = stripe_like
    session = new_session(client)
    assert pay(session, DECLINED).status_code == 402  # its intent is made
    client.v1.checkout.sessions.expire(session.id)
    refused = pay(session, VISA)
    assert refused.status_code == 409 and "expired" in refused.text and f'href="{CANCEL}"' in refused.text
    expired = client.v1.checkout.sessions.retrieve(session.id)
    assert (expired.status, expired.payment_status) == ("expired", "unpaid")
    assert client.v1.payment_intents.retrieve(str(expired.payment_intent)).status == "canceled"  # as Stripe does


def test_a_session_whose_time_is_up_refuses_the_buyer_paying(short: Started) -> None:
    _, client, receiver = short
    session = new_session(client, expires_at=int(time.time()) + 2)
    assert pay(session, "4000 0000 0000 3220").status_code == 200  # at the bank's challenge when time runs out
    time.sleep(max(0.0, session.expires_at - time.time()))
    refused = authenticate(session, True)
    assert refused.status_code == 409 and "expired" in refused.text
    receiver.verified(session.id, "checkout.session.expired")
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "unpaid"
