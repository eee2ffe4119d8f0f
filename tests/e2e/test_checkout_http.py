"""Checkout over HTTP through the whole shop: gateway → orders → inventory → payments → the embedded
payment server (localstripe), whose signed webhooks come back through ``POST /webhooks/stripe``."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
import stripe

from cartwheel.supervisor import System
from tests.e2e.test_cart_http import product

TIMEOUT = 20


def admin(system: System) -> dict[str, str]:
    return {"Authorization": f"Bearer {system.admin_token}"}


def stock(system: System, product_id: str) -> tuple[int, int]:
    level = requests.get(f"{system.base_url}/api/admin/inventory/{product_id}", headers=admin(system),
                         timeout=TIMEOUT).json()
    return level["on_hand"], level["reserved"]


def shopper_with(system: System, product_id: str, quantity: int = 1) -> requests.Session:
    browser = requests.Session()
    added = browser.post(f"{system.base_url}/api/cart/items", json={"product_id": product_id, "quantity": quantity},
                         timeout=TIMEOUT)
    assert added.status_code == 200, added.text
    return browser


def checkout(browser: requests.Session, system: System, **options: Any) -> requests.Response:
    return browser.post(f"{system.base_url}/api/checkout", timeout=TIMEOUT, **options)


def order(browser: requests.Session, system: System, order_id: str) -> dict[str, Any]:
    found = browser.get(f"{system.base_url}/api/orders/{order_id}", timeout=TIMEOUT)
    assert found.status_code == 200, found.text
    return found.json()


def pay(browser: requests.Session, system: System, order_id: str, method: str) -> requests.Response:
    return browser.post(f"{system.base_url}/api/orders/{order_id}/pay", json={"payment_method": method},
                        timeout=TIMEOUT)


def wait_status(browser: requests.Session, system: System, order_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        current = order(browser, system, order_id)
        if current["status"] == status:
            return current
        time.sleep(0.1)
    raise AssertionError(f"order {order_id} is {current['status']}, not {status}: {current}")


def stripe_client(system: System) -> stripe.StripeClient:
    settings = system.settings
    assert settings.stripe_secret_key and settings.stripe_api_base, "the embedded payment server is configured"
    return stripe.StripeClient(settings.stripe_secret_key.get_secret_value(),
                               base_addresses={"api": settings.stripe_api_base})


def signed(system: System, payload: str, timestamp: int | None = None, secret: str | None = None) -> str:
    assert system.settings.stripe_webhook_secret
    secret = secret or system.settings.stripe_webhook_secret.get_secret_value()
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp or int(time.time()))


# -- the whole flow ------------------------------------------------------------------------------


def test_a_shopper_checks_out_pays_and_the_webhook_marks_the_order_paid(system: System) -> None:
    mug = product(system, stock=5)
    browser = shopper_with(system, mug["id"], 2)
    placed = checkout(browser, system, json={})
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert body["status"] == "awaiting_payment" and body["total_cents"] == 2 * mug["price_cents"]
    assert body["payment"]["provider"] == "stripe" and body["payment"]["client_secret"]
    assert stock(system, mug["id"]) == (5, 2)

    paid = pay(browser, system, body["order_id"], "pm_card_visa")
    assert paid.status_code == 200, paid.text
    final = wait_status(browser, system, body["order_id"], "paid")
    assert [h["status"] for h in final["history"]] == ["pending", "reserved", "awaiting_payment", "paid"]
    assert stock(system, mug["id"]) == (3, 0)
    deadline = time.monotonic() + TIMEOUT  # the cart closes once the paid event reaches the cart service
    while browser.get(f"{system.base_url}/api/cart", timeout=TIMEOUT).json()["status"] != "checked_out":
        assert time.monotonic() < deadline, "the cart was never checked out"
        time.sleep(0.1)
    again = browser.post(f"{system.base_url}/api/cart/items", json={"product_id": mug["id"], "quantity": 1},
                         timeout=TIMEOUT)
    assert again.status_code == 200 and again.json()["id"] != final["cart_id"]  # a new cart


def test_a_declined_card_fails_the_payment_and_keeps_the_stock_for_another_try(system: System) -> None:
    mug = product(system, stock=3)
    browser = shopper_with(system, mug["id"], 3)
    placed = checkout(browser, system, json={}).json()
    declined = pay(browser, system, placed["order_id"], "pm_card_chargeCustomerFail")
    assert declined.status_code == 200, declined.text
    failed = wait_status(browser, system, placed["order_id"], "payment_failed")
    assert failed["payment"]["last_error"]
    assert stock(system, mug["id"]) == (3, 3)  # until the reservation runs out


def caught(system: System, to: str, count: int = 1) -> list[dict[str, Any]]:
    """The embedded catcher's mails to ``to``, once it holds ``count``."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        mails = requests.get(f"{system.base_url}/api/admin/mail", params={"to": to}, headers=admin(system),
                             timeout=TIMEOUT).json()["items"]
        if len(mails) >= count or time.monotonic() > deadline:
            return mails
        time.sleep(0.2)


def test_the_buyer_gets_a_confirmation_mail_once_paid_and_one_when_a_card_is_declined(system: System) -> None:
    mug = product(system, stock=5)
    to = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    browser = shopper_with(system, mug["id"], 2)
    placed = checkout(browser, system, json={"email": to}).json()
    pay(browser, system, placed["order_id"], "pm_card_chargeCustomerFail")
    wait_status(browser, system, placed["order_id"], "payment_failed")
    [failed] = caught(system, to)
    assert "did not go through" in failed["subject"]
    pay(browser, system, placed["order_id"], "pm_card_visa")
    wait_status(browser, system, placed["order_id"], "paid")

    confirmed, _ = caught(system, to, count=2)
    assert confirmed["subject"].endswith("is confirmed") and confirmed["to"] == [to]
    assert f"{system.base_url}/orders/{placed['order_id']}" in confirmed["text"]
    assert mug["name"] in confirmed["text"] and mug["name"] in confirmed["html"]
    deadline = time.monotonic() + TIMEOUT  # the catcher has a mail a moment before its sender records it sent
    while True:
        mails = requests.get(f"{system.base_url}/api/admin/orders/{placed['order_id']}/mails",
                             headers=admin(system), timeout=TIMEOUT).json()["items"]
        kinds = [(m["kind"], m["status"]) for m in mails]
        if kinds == [("payment_failed", "sent"), ("order_confirmation", "sent")] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert kinds == [("payment_failed", "sent"), ("order_confirmation", "sent")]


def test_three_d_secure_leaves_the_order_waiting_for_the_buyer(system: System) -> None:
    mug = product(system, stock=3)
    browser = shopper_with(system, mug["id"])
    placed = checkout(browser, system, json={}).json()
    method = stripe_client(system).v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2030,
                                         "cvc": "123"}}
    )
    answered = pay(browser, system, placed["order_id"], method.id).json()
    assert answered["status"] == "awaiting_payment" and answered["payment"]["status"] == "requires_action"
    assert stock(system, mug["id"]) == (3, 1)


def test_the_order_page_takes_cards_with_the_embedded_servers_own_stripe_js(system: System) -> None:
    settings = system.settings
    browser = shopper_with(system, product(system, stock=3)["id"])
    placed = checkout(browser, system, json={}).json()
    page = browser.get(f"{system.base_url}/orders/{placed['order_id']}", timeout=TIMEOUT)
    assert f'<script src="{settings.stripe_js_url}" defer></script>' in page.text
    assert f'data-stripe-key="{settings.stripe_publishable_key}"' in page.text
    assert f'data-client-secret="{placed["payment"]["client_secret"]}"' in page.text
    assert f"script-src 'self' {settings.stripe_api_base};" in page.headers["Content-Security-Policy"]
    script = requests.get(settings.stripe_js_url, timeout=TIMEOUT)
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "Cartwheel's stand-in for Stripe.js" in script.text  # the project's, not localstripe's


def test_stripe_js_calls_with_the_publishable_key_pass_3d_secure_and_the_order_turns_paid(system: System) -> None:
    """The calls the Stripe.js stand-in makes from the order page, as forms with the publishable key."""
    api, key = system.settings.stripe_api_base, system.settings.stripe_publishable_key
    browser = shopper_with(system, product(system, stock=3)["id"])
    placed = checkout(browser, system, json={}).json()
    intent, secret = placed["payment"]["payment_intent_id"], placed["payment"]["client_secret"]
    card = {"card[number]": "4000 0025 0000 3155", "card[exp_month]": "12", "card[exp_year]": "2034",
            "card[cvc]": "123", "billing_details[email]": "buyer@example.test"}
    method = requests.post(f"{api}/v1/payment_methods", data={"key": key, "type": "card", **card}, timeout=TIMEOUT)
    assert method.status_code == 200, method.text
    confirm = {"key": key, "client_secret": secret, "payment_method": method.json()["id"],
               "return_url": f"{system.base_url}/orders/{placed['order_id']}"}
    pending = requests.post(f"{api}/v1/payment_intents/{intent}/confirm", data=confirm, timeout=TIMEOUT)
    assert pending.json()["status"] == "requires_action", pending.text
    passed = requests.post(f"{api}/v1/payment_intents/{intent}/_authenticate?success=true",
                           data={"key": key, "client_secret": secret}, timeout=TIMEOUT)
    assert passed.json()["status"] == "succeeded", passed.text
    assert wait_status(browser, system, placed["order_id"], "paid")["payment"]["status"] == "succeeded"


def test_fifty_buyers_for_the_last_unit_one_pays_the_rest_get_409(system: System) -> None:
    last = product(system, stock=1)
    browsers = [shopper_with(system, last["id"]) for _ in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda b: checkout(b, system, json={}), browsers))
    winners = [(b, a.json()) for b, a in zip(browsers, answers, strict=True) if a.status_code == 201]
    assert len(winners) == 1, [a.status_code for a in answers]
    losers = [a for a in answers if a.status_code != 201]
    assert {a.status_code for a in losers} == {409}
    assert {a.json()["error"]["code"] for a in losers} == {"out_of_stock"}
    browser, placed = winners[0]
    pay(browser, system, placed["order_id"], "pm_card_visa")
    wait_status(browser, system, placed["order_id"], "paid")
    assert stock(system, last["id"]) == (0, 0)


def test_an_idempotency_key_retry_returns_the_same_order(system: System) -> None:
    mug = product(system, stock=5)
    browser = shopper_with(system, mug["id"])
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first, second = checkout(browser, system, json={}, headers=key), checkout(browser, system, json={}, headers=key)
    assert first.status_code == 201 and second.json()["order_id"] == first.json()["order_id"]
    assert stock(system, mug["id"]) == (5, 1)


def test_an_anonymous_buy_now_replayed_by_another_client_is_not_the_first_buyers_order(system: System) -> None:
    """Issue 13, finding 6: the key was scoped to the body (items, email), which anyone may replay; the second
    client got the first buyer's order, client secret and orders cookie. Now the key is the browser's."""
    mug = product(system, stock=5)
    body = {"items": [{"product_id": mug["id"], "quantity": 1}], "email": "buyer@example.com"}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    buyer, replayer = requests.Session(), requests.Session()
    first = checkout(buyer, system, json=body, headers=key)
    again = checkout(buyer, system, json=body, headers=key)  # the buyer's own retry: the same order
    stolen = checkout(replayer, system, json=body, headers=key)
    assert first.status_code == again.status_code == 201, first.text
    assert again.json()["order_id"] == first.json()["order_id"]
    assert stolen.status_code == 201 and stolen.json()["order_id"] != first.json()["order_id"]
    assert stolen.json()["payment"]["client_secret"] != first.json()["payment"]["client_secret"]
    assert first.json()["order_id"] not in stolen.cookies.get("orders", "")


def test_an_order_is_visible_to_its_buyer_only(system: System) -> None:
    mug = product(system, stock=5)
    browser = shopper_with(system, mug["id"])
    placed = checkout(browser, system, json={}).json()
    assert order(browser, system, placed["order_id"])["order_id"] == placed["order_id"]
    stranger = requests.get(f"{system.base_url}/api/orders/{placed['order_id']}", timeout=TIMEOUT)
    assert stranger.status_code == 404
    as_admin = requests.get(f"{system.base_url}/api/orders/{placed['order_id']}", headers=admin(system),
                            timeout=TIMEOUT)
    assert as_admin.status_code == 200


# Found by test_api_fuzz.py: each was a 404 or a 500 where a client's mistake gets a 4xx /openapi.json documents.


def test_a_page_after_an_order_that_does_not_exist_is_422(system: System) -> None:
    # A 404 before, which reads as "no such route" on a list; a cursor the gateway did not sign is a 422 everywhere.
    listed = requests.get(f"{system.base_url}/api/admin/orders", params={"cursor": "ord_nothing"},
                          headers=admin(system), timeout=TIMEOUT)
    assert listed.status_code == 422, listed.text
    assert listed.json()["error"]["fields"] == [{"field": "cursor", "message": "not a cursor this shop handed out"}]


def test_an_order_that_costs_nothing_is_422_and_holds_no_stock(system: System) -> None:
    # A 500 before: the stock was reserved, then no payment intent of 0 could be asked for, and the unit stayed held.
    free = product(system, stock=5, price_cents=0)
    answer = checkout(shopper_with(system, free["id"]), system, json={})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "nothing_to_pay"
    assert stock(system, free["id"]) == (5, 0)


# -- webhooks ------------------------------------------------------------------------------------


def succeeded_event(placed: dict[str, Any]) -> str:
    intent = placed["payment"]["payment_intent_id"]
    return json.dumps({
        "id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "payment_intent.succeeded",
        "created": int(time.time()), "livemode": False, "api_version": "2024-06-20",
        "data": {"object": {"id": intent, "object": "payment_intent", "amount": placed["total_cents"],
                            "currency": placed["currency"].lower(), "status": "succeeded",
                            "metadata": {"order_id": placed["order_id"]}}},
    }, separators=(", ", ": "))


def post_webhook(system: System, payload: str, signature: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return requests.post(f"{system.base_url}/webhooks/stripe", data=payload.encode(), headers=headers,
                         timeout=TIMEOUT)


def test_forged_tampered_and_stale_webhooks_are_400_and_change_nothing(system: System) -> None:
    mug = product(system, stock=2)
    browser = shopper_with(system, mug["id"])
    placed = checkout(browser, system, json={}).json()
    payload = succeeded_event(placed)
    attempts = {
        "unsigned": post_webhook(system, payload, None),
        "forged": post_webhook(system, payload, signed(system, payload, secret="whsec_not_the_shops")),
        "tampered": post_webhook(system, payload.replace('"amount": ', '"amount": 1'), signed(system, payload)),
        "stale": post_webhook(system, payload, signed(system, payload, timestamp=int(time.time()) - 3600)),
    }
    assert {name: answer.status_code for name, answer in attempts.items()} == dict.fromkeys(attempts, 400)
    time.sleep(0.5)
    assert order(browser, system, placed["order_id"])["status"] == "awaiting_payment"
    assert stock(system, mug["id"]) == (2, 1)


def test_the_same_webhook_ten_times_moves_the_order_once(system: System) -> None:
    mug = product(system, stock=2)
    browser = shopper_with(system, mug["id"])
    placed = checkout(browser, system, json={}).json()
    intents = stripe_client(system).v1.payment_intents  # the buyer pays with Stripe.js: at Stripe, not through us
    intents.update(placed["payment"]["payment_intent_id"], params={"payment_method": "pm_card_visa"})
    back = {"return_url": f"{system.base_url}/orders/{placed['order_id']}"}  # as Stripe.js sends the page's own
    intents.confirm(placed["payment"]["payment_intent_id"], params=back)
    payload = succeeded_event(placed)
    answers = [post_webhook(system, payload, signed(system, payload)) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert [a.json()["duplicate"] for a in answers] == [False] + [True] * 9
    final = wait_status(browser, system, placed["order_id"], "paid")
    assert [h["status"] for h in final["history"]].count("paid") == 1
    assert stock(system, mug["id"]) == (1, 0)
