"""Stripe's documented test cards and test PaymentMethod ids (https://docs.stripe.com/testing), and what each does.

Pure data: the embedded payment server answers from this table, and the README's "Test cards"
table is checked against :func:`readme_rows`. A card is found by a ``pm_card_*`` id or by the number
typed in a browser (spaces and dashes ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["succeeds", "declined", "requires_action", "requires_action_then_declined"]

DECLINED = "Your card was declined."
VISA = "4242424242424242"
UPSTREAM_DIGITS = 16  # localstripe takes 16-digit numbers and 3-digit CVCs only


@dataclass(frozen=True)
class CardError:
    """A decline as Stripe reports it in ``error`` and ``last_payment_error`` (``type`` is ``card_error``)."""

    code: str
    decline_code: str
    message: str
    param: str | None = None  # the field Stripe names for an expired card or a wrong CVC


@dataclass(frozen=True)
class TestCard:
    number: str
    brand: str
    payment_methods: tuple[str, ...]  # the id Stripe's docs list first, then the other spellings it accepts
    outcome: Outcome
    error: CardError | None = None
    funding: str = "credit"
    attaches: bool = True  # Stripe checks a card when it is attached to a customer: the decline cards fail there

    __test__ = False  # not a pytest class

    @property
    def upstream_number(self) -> str:
        """The number the embedded server is given (Amex's 15 digits are not taken there: Visa's stand in)."""
        return self.number if len(self.number) == UPSTREAM_DIGITS else VISA


def _declined(code: str, decline_code: str, message: str = DECLINED, param: str | None = None) -> CardError:
    return CardError(code, decline_code, message, param)


GENERIC = _declined("card_declined", "generic_decline")
INSUFFICIENT_FUNDS = _declined("card_declined", "insufficient_funds", "Your card has insufficient funds.")

CARDS: tuple[TestCard, ...] = (
    TestCard(VISA, "visa", ("pm_card_visa",), "succeeds"),
    TestCard("4000056655665556", "visa", ("pm_card_visa_debit",), "succeeds", funding="debit"),
    TestCard("5555555555554444", "mastercard", ("pm_card_mastercard",), "succeeds"),
    TestCard("5200828282828210", "mastercard", ("pm_card_mastercard_debit",), "succeeds", funding="debit"),
    TestCard("5105105105105100", "mastercard", ("pm_card_mastercard_prepaid",), "succeeds", funding="prepaid"),
    TestCard("378282246310005", "amex", ("pm_card_amex",), "succeeds"),
    TestCard("6011111111111117", "discover", ("pm_card_discover",), "succeeds"),
    TestCard("3056930009020004", "diners", ("pm_card_diners",), "succeeds"),
    TestCard("3566002020360505", "jcb", ("pm_card_jcb",), "succeeds"),
    TestCard("6200000000000005", "unionpay", ("pm_card_unionpay",), "succeeds"),
    TestCard("4000000000003055", "visa", ("pm_card_threeDSecureOptional",), "succeeds"),
    TestCard("4000000000000002", "visa", ("pm_card_visa_chargeDeclined", "pm_card_chargeDeclined"), "declined",
             GENERIC, attaches=False),
    TestCard("4000000000009995", "visa",
             ("pm_card_visa_chargeDeclinedInsufficientFunds", "pm_card_chargeDeclinedInsufficientFunds"),
             "declined", INSUFFICIENT_FUNDS, attaches=False),
    TestCard("4000000000009987", "visa", ("pm_card_visa_chargeDeclinedLostCard", "pm_card_chargeDeclinedLostCard"),
             "declined", _declined("card_declined", "lost_card"), attaches=False),
    TestCard("4000000000009979", "visa",
             ("pm_card_visa_chargeDeclinedStolenCard", "pm_card_chargeDeclinedStolenCard"),
             "declined", _declined("card_declined", "stolen_card"), attaches=False),
    TestCard("4000000000000069", "visa", ("pm_card_chargeDeclinedExpiredCard",), "declined",
             _declined("expired_card", "expired_card", "Your card has expired.", "exp_month"), attaches=False),
    TestCard("4000000000000127", "visa", ("pm_card_chargeDeclinedIncorrectCvc",), "declined",
             _declined("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc"),
             attaches=False),
    TestCard("4000000000000119", "visa", ("pm_card_chargeDeclinedProcessingError",), "declined",
             _declined("processing_error", "processing_error",
                       "An error occurred while processing your card. Try again in a little bit."), attaches=False),
    TestCard("4000000000000341", "visa", ("pm_card_chargeCustomerFail",), "declined", GENERIC),
    TestCard("4000002500003155", "visa", ("pm_card_authenticationRequiredOnSetup",), "requires_action"),
    TestCard("4000002760003184", "visa", ("pm_card_authenticationRequired",), "requires_action"),
    TestCard("4000000000003220", "visa", ("pm_card_threeDSecure2Required",), "requires_action"),
    TestCard("4000000000003063", "visa", ("pm_card_threeDSecureRequired",), "requires_action"),
    TestCard("4000008260003178", "visa", ("pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",),
             "requires_action_then_declined", INSUFFICIENT_FUNDS),
    TestCard("4000008400001629", "visa", ("pm_card_threeDSecureRequiredChargeDeclined",),
             "requires_action_then_declined", GENERIC),
)

_BY_METHOD = {method: card for card in CARDS for method in card.payment_methods}
_BY_NUMBER = {card.number: card for card in CARDS}


def card_for_payment_method(payment_method: str | None) -> TestCard | None:
    """The card a test PaymentMethod id (``pm_card_visa``) stands for; None for any other id."""
    return _BY_METHOD.get(payment_method or "")


def card_for_number(number: str | None) -> TestCard | None:
    """The test card with this number as typed (``4000 0000 0000 0002``); None for any other number."""
    return _BY_NUMBER.get(normalise_number(number or ""))


def normalise_number(number: str) -> str:
    return "".join(ch for ch in number if ch not in " -")


ANSWERS: dict[Outcome, str] = {
    "succeeds": "succeeded",
    "declined": "402 card_error; intent requires_payment_method",
    "requires_action": "requires_action (3-D Secure)",
    "requires_action_then_declined": "requires_action; after 3-D Secure, declined",
}


def readme_rows() -> list[tuple[str, str, str, str, str]]:
    """The README's test-card table as it must read: payment methods, number, answer, codes, message."""
    rows = []
    for card in CARDS:
        number = " ".join(card.number[i:i + 4] for i in range(0, len(card.number), 4))
        methods = ", ".join(f"`{method}`" for method in card.payment_methods)
        codes = f"`{card.error.code}` / `{card.error.decline_code}`" if card.error else ""
        rows.append((methods, number, ANSWERS[card.outcome], codes, card.error.message if card.error else ""))
    return rows
