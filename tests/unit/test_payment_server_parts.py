"""The Stripe stand-in's pure parts: parameters, metering, how intents are shown, its state file, signatures."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import stripe

from cartwheel.paymentserver import state as saved
from cartwheel.paymentserver.metering import SlidingWindow, Stats, path_kind
from cartwheel.paymentserver.params import Params, flatten
from cartwheel.paymentserver.present import card_error, present_intent, present_method
from cartwheel.paymentserver.state import IntentNotes, Registration, State
from cartwheel.paymentserver.testcards import card_for_payment_method
from cartwheel.paymentserver.webhooks import make_event, signature_header


def test_json_and_form_bodies_become_the_same_pairs() -> None:
    body = {"type": "card", "card": {"number": "4242", "exp_month": 12}, "expand": ["latest_charge"], "x": True}
    as_json = Params.from_body(json.dumps(body).encode(), "application/json")
    as_form = Params.from_body(b"type=card&card[number]=4242&card[exp_month]=12&expand[]=latest_charge&x=true",
                               "application/x-www-form-urlencoded")
    assert as_json.pairs == as_form.pairs == flatten(body)
    assert Params.from_body(b"", "application/json").pairs == []
    as_text = Params.from_body(b'{"key": "pk_test_x", "client_secret": "pi_1_secret_2"}', "text/plain")
    assert as_text.pairs == [("key", "pk_test_x"), ("client_secret", "pi_1_secret_2")]  # localstripe's stripe.js


def test_a_tree_of_parameters_comes_out_one_level_down() -> None:
    params = Params([("amount", "5"), ("payment_method_data[type]", "card"),
                     ("payment_method_data[card][number]", "4242"), ("receipt_email", "a@b.c")])
    inner = params.pop_tree("payment_method_data")
    assert inner.pairs == [("type", "card"), ("card[number]", "4242")]
    assert params.pairs == [("amount", "5"), ("receipt_email", "a@b.c")]
    assert params.pop("receipt_email") == "a@b.c" and params.pop("receipt_email") is None
    params.set("amount", "7")
    assert params.encode() == "amount=7"


def test_ids_in_paths_are_folded_into_kinds() -> None:
    assert path_kind("POST", "/v1/payment_intents/pi_3NxYz12/confirm") == "POST /v1/payment_intents/{id}/confirm"
    assert path_kind("POST", "/v1/payment_intents") == "POST /v1/payment_intents"
    assert path_kind("GET", "/v1/payment_methods/pm_card_visa") == "GET /v1/payment_methods/{id}"
    authenticate = path_kind("POST", "/v1/payment_intents/pi_AbC/_authenticate")
    assert authenticate == "POST /v1/payment_intents/{id}/_authenticate"


def test_the_window_admits_the_rate_and_says_how_long_to_wait() -> None:
    now = [100.0]
    window = SlidingWindow(20, clock=lambda: now[0])
    assert all(window.admit() is None for _ in range(20))
    now[0] += 0.25
    wait = window.admit()
    assert wait is not None and abs(wait - 0.75) < 1e-9
    now[0] += 0.75
    assert window.admit() is None
    slow = SlidingWindow(0.5, clock=lambda: now[0])
    assert slow.admit() is None and slow.admit() == 2.0


def test_stats_count_by_kind_and_reset() -> None:
    stats = Stats()
    stats.count("POST /v1/payment_intents")
    stats.count("POST /v1/payment_intents", rate_limited=True)
    stats.note("declined")
    counted = stats.as_json(20.0)
    assert (counted["requests"], counted["rate_limited"], counted["declined"], counted["rate_limit"]) == (2, 1, 1, 20.0)
    assert counted["by_kind"] == {"POST /v1/payment_intents": {"requests": 2, "rate_limited": 1}}
    stats.reset()
    assert stats.as_json(None)["requests"] == 0


def test_an_intent_shows_what_localstripe_refused_and_its_decline() -> None:
    intent = {"id": "pi_1", "object": "payment_intent", "status": "requires_payment_method", "payment_method": None,
              "last_payment_error": None}
    assert present_intent(intent, None)["receipt_email"] is None  # Stripe always has the field
    card = card_for_payment_method("pm_card_chargeDeclinedExpiredCard")
    assert card is not None and card.error is not None
    error = card_error(card.error, {"id": "pm_x"})
    notes = IntentNotes(params={"receipt_email": "a@b.c"}, last_payment_error=error, failed_method="pm_x")
    shown = present_intent(intent, notes)
    assert shown["receipt_email"] == "a@b.c"
    assert shown["last_payment_error"] | {} == {"type": "card_error", "code": "expired_card",
                                                "decline_code": "expired_card", "message": "Your card has expired.",
                                                "param": "exp_month", "payment_method": {"id": "pm_x"},
                                                "doc_url": "https://stripe.com/docs/error-codes/expired-card"}
    stuck = {**intent, "status": "requires_confirmation", "payment_method": "pm_x"}  # taking it off failed
    assert (present_intent(stuck, notes)["status"], present_intent(stuck, notes)["payment_method"]) == (
        "requires_payment_method", None)


def test_a_method_shows_its_test_cards_brand() -> None:
    method = {"id": "pm_1", "object": "payment_method", "card": {"brand": "visa", "last4": "4242", "funding": "credit"}}
    amex = card_for_payment_method("pm_card_amex")
    assert present_method(method, amex)["card"] == {"brand": "amex", "last4": "0005", "funding": "credit"}
    assert present_method(method, None) == method


def test_the_state_file_is_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "standin.json"
    state = State()
    state.notes("pi_1").params["receipt_email"] = "a@b.c"
    state.methods["pm_1"] = "4000000000000002"
    state.aliases["pm_card_visa"] = "pm_2"
    state.webhooks["shop"] = Registration("http://127.0.0.1:1/", "whsec_x", ["payment_intent.succeeded"])
    saved.save(state, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved.load(path) == state
    state.clear_data()
    assert (state.intents, state.methods, state.aliases) == ({}, {}, {}) and "shop" in state.webhooks


def test_an_unreadable_state_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "standin.json"
    path.write_text("{not json")
    assert saved.load(path) == State()
    assert not path.exists() and len([p for p in os.listdir(tmp_path) if ".unreadable-" in p]) == 1


def test_events_are_signed_as_stripe_signs_them() -> None:
    event = make_event("payment_intent.payment_failed", {"id": "pi_1", "object": "payment_intent"}, 1_700_000_000)
    payload = json.dumps(event)
    header = signature_header(payload, "whsec_test", 1_700_000_000)
    assert stripe.WebhookSignature.verify_header(payload, header, "whsec_test", tolerance=None)
    assert event["id"].startswith("evt_") and event["data"]["object"]["id"] == "pi_1"
    assert Registration("u", "s").wants("anything") and not Registration("u", "s", ["a"]).wants("b")
