"""The stand-in's Checkout Sessions, pure: parameters checked as Stripe checks them, the shape shown, the page."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cartwheel.paymentserver import state as saved
from cartwheel.paymentserver.hostedpage import CardRefused, card_params, luhn
from cartwheel.paymentserver.pagehtml import amount, closed_page, pay_page
from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.sessionparams import SessionRefused, Window, nest, request_digest, session_from
from cartwheel.paymentserver.sessions import present_lines, present_session
from cartwheel.paymentserver.state import State

NOW = 1_800_000_000
BASE = "http://127.0.0.1:12111"
STRIPE = Window()  # 30 minutes to 24 hours


def form(**extra: str) -> Params:
    pairs = {"mode": "payment", "success_url": "http://shop.test/ok?s={CHECKOUT_SESSION_ID}",
             "cancel_url": "http://shop.test/cart", "line_items[0][price_data][currency]": "eur",
             "line_items[0][price_data][unit_amount]": "1200",
             "line_items[0][price_data][product_data][name]": "Mug <blue>", "line_items[0][quantity]": "2",
             "metadata[order_id]": "o-1", "payment_intent_data[metadata][order_id]": "o-1",
             "payment_intent_data[receipt_email]": "buyer@example.test", **extra}
    return Params((key, value) for key, value in pairs.items() if value != "-")


def made(params: Params, window: Window = STRIPE) -> dict[str, object]:
    return present_session(session_from(params, now=NOW, window=window, base_url=BASE))


def refused(params: Params, window: Window = STRIPE) -> tuple[str, str | None]:
    with pytest.raises(SessionRefused) as caught:
        session_from(params, now=NOW, window=window, base_url=BASE)
    return caught.value.message, caught.value.param


def test_a_session_is_made_as_stripe_shows_it() -> None:
    shown = made(form(expires_at=str(NOW + 3600), client_reference_id="o-1", customer_email="buyer@example.test"))
    assert shown | {"id": "x", "url": "x"} == {
        "id": "x", "object": "checkout.session", "mode": "payment", "livemode": False, "created": NOW,
        "expires_at": NOW + 3600, "status": "open", "payment_status": "unpaid", "url": "x", "amount_subtotal": 2400,
        "amount_total": 2400, "currency": "eur", "client_reference_id": "o-1", "customer_email": "buyer@example.test",
        "customer": None, "customer_details": None, "metadata": {"order_id": "o-1"}, "payment_intent": None,
        "payment_method_types": ["card"], "success_url": "http://shop.test/ok?s={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://shop.test/cart"}
    assert str(shown["id"]).startswith("cs_test_") and shown["url"] == f"{BASE}/c/pay/{shown['id']}"
    assert made(form())["expires_at"] == NOW + 24 * 3600


@pytest.mark.parametrize(("extra", "message", "param"), [
    ({"mode": "subscription"}, "The embedded payment server takes mode=payment only, not subscription.", "mode"),
    ({"mode": "-"}, "Missing required param: mode.", "mode"),
    ({"success_url": "-"}, "Missing required param: success_url.", "success_url"),
    ({"cancel_url": "javascript:alert(1)"}, "Not a valid URL", "cancel_url"),
    ({"expires_at": str(NOW + 1799)}, "The `expires_at` timestamp must be at least 30 minutes from Checkout Session "
     "creation.", "expires_at"),
    ({"expires_at": str(NOW + 24 * 3600 + 1)}, "The `expires_at` timestamp must be less than 24 hours from Checkout "
     "Session creation.", "expires_at"),
    ({"line_items[0][quantity]": "0"}, "This value must be greater than or equal to 1.", "line_items[0][quantity]"),
    ({"line_items[0][price_data][unit_amount]": "12.5"}, "Invalid integer: 12.5",
     "line_items[0][price_data][unit_amount]"),
    ({"line_items[0][price]": "price_123"}, "The embedded payment server takes price_data only, not a price id.",
     "line_items[0][price]"),
    ({"line_items[1][price_data][currency]": "usd", "line_items[1][price_data][unit_amount]": "5",
      "line_items[1][price_data][product_data][name]": "Pen", "line_items[1][quantity]": "1"},
     "All line items must have the same currency.", "line_items"),
    ({"payment_intent_data[capture_method]": "manual"}, "Received unknown parameter: payment_intent_data"
     "[capture_method] (the embedded payment server takes a subset of Stripe's Checkout Session API)",
     "payment_intent_data[capture_method]"),
    ({"customer_email": "nobody"}, "Invalid email address: nobody", "customer_email"),
])
def test_what_stripe_refuses_is_refused_with_its_param(extra: dict[str, str], message: str, param: str) -> None:
    assert refused(form(**extra)) == (message, param)


def test_the_least_time_ahead_is_an_option() -> None:
    assert made(form(expires_at=str(NOW + 5)), Window(least=2))["expires_at"] == NOW + 5
    assert refused(form(expires_at=str(NOW + 1)), Window(least=2))[0].startswith("The `expires_at` timestamp must "
                                                                                  "be at least 2 seconds")


def test_line_items_come_in_stripes_list_shape_a_page_at_a_time() -> None:
    lines = {f"line_items[{i}][{key}]": value for i in range(3) for key, value in (
        ("price_data][currency", "eur"), ("price_data][unit_amount", str(100 * (i + 1))),
        ("price_data][product_data][name", f"Item {i}"), ("quantity", "1"))}
    session = session_from(form(**lines), now=NOW, window=Window(), base_url=BASE)
    assert session.amount_total == 600
    first = present_lines(session, limit=2)
    assert [item["description"] for item in first["data"]] == ["Item 0", "Item 1"] and first["has_more"]
    rest = present_lines(session, limit=2, starting_after=first["data"][-1]["id"])
    assert [item["price"]["unit_amount"] for item in rest["data"]] == [300] and not rest["has_more"]


def test_parameters_nest_and_digest_as_sent() -> None:
    assert nest(Params([("a[0][b][c]", "1"), ("a[0][d]", "2"), ("e[]", "x")])) == {
        "a": {"0": {"b": {"c": "1"}, "d": "2"}}, "e": {"": "x"}}
    assert request_digest(form()) == request_digest(form()) != request_digest(form(client_reference_id="x"))


def test_sessions_are_kept_in_the_state_file_and_cleared_with_the_data(tmp_path: Path) -> None:
    path, state = tmp_path / "standin.json", State()
    session = session_from(form(), now=NOW, window=Window(), base_url=BASE)
    state.sessions[session.id], state.session_keys["key-1"] = session, session.id
    saved.save(state, path)
    assert saved.load(path) == state
    state.clear_data()
    assert (state.sessions, state.session_keys) == ({}, {})


def test_a_card_is_read_from_the_form_as_stripes_page_checks_it() -> None:
    today = datetime(2030, 6, 1, tzinfo=UTC)
    card = card_params({"card_number": "4242 4242 4242 4242", "expiry": "06 / 30", "cvc": "123"}, today)
    assert card.pairs == [("card[number]", "4242424242424242"), ("card[exp_month]", "6"), ("card[exp_year]", "2030"),
                          ("card[cvc]", "123")]
    for wrong, message in [({"card_number": "4242 4242 4242 4241"}, "Your card number is invalid."),
                           ({"expiry": "13/30"}, "Your card's expiration date is incomplete."),
                           ({"expiry": "05/2030"}, "Your card's expiration date is in the past."),
                           ({"cvc": "12"}, "Your card's security code is incomplete.")]:
        with pytest.raises(CardRefused, match=message):
            card_params({"card_number": "4242424242424242", "expiry": "12/34", "cvc": "123", **wrong}, today)
    assert luhn("378282246310005") and not luhn("378282246310006")


def test_the_page_shows_amounts_in_the_currencys_units_and_escapes_what_it_shows() -> None:
    assert (amount(2400, "eur"), amount(500, "jpy"), amount(500000, "isk")) == ("EUR 24.00", "JPY 500", "ISK 5,000")
    session = session_from(form(customer_email="buyer@example.test"), now=NOW, window=Window(), base_url=BASE)
    page = pay_page(session, "Your card was declined.")
    assert "Mug &lt;blue&gt;" in page and "<blue>" not in page
    assert '<p role="alert" class="error">Your card was declined.</p>' in page
    assert '<label for="card-number">Card number</label>' in page and ">Pay</button>" in page
    assert '<a href="http://shop.test/cart">Back to the shop</a>' in page and "buyer@example.test" in page
    session.status = "complete"
    assert f'href="http://shop.test/ok?s={session.id}"' in closed_page(session)
