"""Stripe's test cards as the embedded payment server knows them, and the README's table of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cartwheel.paymentserver.testcards import (
    CARDS,
    VISA,
    card_for_number,
    card_for_payment_method,
    readme_rows,
)

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "### Test cards"


def readme_table() -> list[tuple[str, ...]]:
    """The rows of the first table under the README's test-cards heading, cells stripped."""
    text = README.read_text()
    assert HEADING in text, f"README.md has no '{HEADING}' section"
    lines = text.split(HEADING, 1)[1].splitlines()
    table = [line for line in lines[next(i for i, line in enumerate(lines) if line.startswith("|")):]]
    table = table[:next((i for i, line in enumerate(table) if not line.startswith("|")), len(table))]
    return [tuple(cell.strip() for cell in line.strip().strip("|").split("|")) for line in table[2:]]


def test_the_readme_table_is_the_table_the_server_answers_from() -> None:
    assert readme_table() == readme_rows()


@pytest.mark.parametrize(("method", "number", "outcome", "decline_code", "message"), [
    ("pm_card_visa", "4242424242424242", "succeeds", None, None),
    ("pm_card_mastercard", "5555555555554444", "succeeds", None, None),
    ("pm_card_visa_debit", "4000056655665556", "succeeds", None, None),
    ("pm_card_chargeDeclined", "4000000000000002", "declined", "generic_decline", "Your card was declined."),
    ("pm_card_visa_chargeDeclined", "4000000000000002", "declined", "generic_decline", "Your card was declined."),
    ("pm_card_chargeDeclinedInsufficientFunds", "4000000000009995", "declined", "insufficient_funds",
     "Your card has insufficient funds."),
    ("pm_card_chargeDeclinedLostCard", "4000000000009987", "declined", "lost_card", "Your card was declined."),
    ("pm_card_chargeDeclinedStolenCard", "4000000000009979", "declined", "stolen_card", "Your card was declined."),
    ("pm_card_chargeDeclinedExpiredCard", "4000000000000069", "declined", "expired_card", "Your card has expired."),
    ("pm_card_chargeDeclinedIncorrectCvc", "4000000000000127", "declined", "incorrect_cvc",
     "Your card's security code is incorrect."),
    ("pm_card_chargeDeclinedProcessingError", "4000000000000119", "declined", "processing_error",
     "An error occurred while processing your card. Try again in a little bit."),
    ("pm_card_chargeCustomerFail", "4000000000000341", "declined", "generic_decline", "Your card was declined."),
    ("pm_card_authenticationRequired", "4000002760003184", "requires_action", None, None),
    ("pm_card_authenticationRequiredOnSetup", "4000002500003155", "requires_action", None, None),
    ("pm_card_threeDSecure2Required", "4000000000003220", "requires_action", None, None),
])
def test_stripes_documented_test_methods(method: str, number: str, outcome: str, decline_code: str | None,
                                         message: str | None) -> None:
    card = card_for_payment_method(method)
    assert card is not None and card is card_for_number(number)
    assert card.outcome == outcome
    assert (card.error.decline_code if card.error else None, card.error.message if card.error else None) == (
        decline_code, message)


def test_the_error_code_is_the_decline_for_the_cards_stripe_reports_so() -> None:
    codes = {card.payment_methods[0]: card.error.code for card in CARDS if card.error}
    assert codes["pm_card_chargeDeclinedExpiredCard"] == "expired_card"
    assert codes["pm_card_chargeDeclinedIncorrectCvc"] == "incorrect_cvc"
    assert codes["pm_card_chargeDeclinedProcessingError"] == "processing_error"
    assert codes["pm_card_visa_chargeDeclinedInsufficientFunds"] == "card_declined"


def test_a_typed_number_finds_its_card_whatever_the_spacing() -> None:
    assert card_for_number("4000 0000 0000 9995") is card_for_number("4000-0000-0000-9995") is card_for_number(
        "4000000000009995")
    assert card_for_number("4111111111111111") is None and card_for_payment_method("pm_card_nope") is None


def test_every_card_and_id_appears_once_and_every_decline_says_why() -> None:
    numbers = [card.number for card in CARDS]
    methods = [method for card in CARDS for method in card.payment_methods]
    assert len(numbers) == len(set(numbers)) and len(methods) == len(set(methods))
    assert all(method.startswith("pm_card_") for method in methods)
    for card in CARDS:
        assert (card.error is not None) == ("declined" in card.outcome), card.number
        assert len(card.upstream_number) == 16


def test_only_the_card_that_fails_on_charge_attaches_among_the_declines() -> None:
    attaching = [card.payment_methods[0] for card in CARDS if card.outcome == "declined" and card.attaches]
    assert attaching == ["pm_card_chargeCustomerFail"]


def test_amex_goes_to_localstripe_as_a_visa_number() -> None:
    amex = card_for_payment_method("pm_card_amex")
    assert amex is not None and amex.number == "378282246310005" and amex.upstream_number == VISA
