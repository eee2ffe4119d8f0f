"""Amounts of money: the shop's integer minor units (ISO 4217's) and the units Stripe wants.

The shop keeps every amount as an integer in its currency's ISO 4217 minor units (``price_cents``:
cents of EUR, whole yen, thousandths of a dinar). Stripe has a table of its own
(https://docs.stripe.com/currencies): some currencies it counts in other units than ISO does, and
some amounts it refuses. :func:`to_stripe` and :func:`from_stripe` convert; :func:`unchargeable`
says why Stripe would refuse an amount, so a product's price is refused when it is saved, not at
checkout. :func:`money` writes an amount for a locale. Pure: no I/O.
"""

from __future__ import annotations

from decimal import Decimal

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency, format_decimal

ISO_ZERO_DECIMAL = frozenset(
    ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]
)
ISO_THREE_DECIMAL = frozenset(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"])

STRIPE_ZERO_DECIMAL = frozenset(
    ["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "VND", "VUV", "XAF", "XOF", "XPF"]
)
"""Stripe's zero-decimal currencies: MGA among them (ISO: two decimals); ISK and UGX not (below)."""
STRIPE_THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])
"""Counted in thousandths, but Stripe's payment partners take only amounts whose last digit is 0."""
STRIPE_WHOLE_IN_HUNDREDTHS = frozenset(["ISK", "UGX"])
"""Stripe's special cases: whole units only, yet sent as two-decimal amounts (5 ISK is ``500``)."""


def minor_units(currency: str | None) -> int:
    """Decimal places of the shop's amounts in ``currency`` (ISO 4217; 2 where it is not known)."""
    if currency in ISO_ZERO_DECIMAL:
        return 0
    return 3 if currency in ISO_THREE_DECIMAL else 2


DEFAULT_LOCALE = "en"


def money(amount: int | None, currency: str | None, locale: str = DEFAULT_LOCALE) -> str:
    """As people in ``locale`` read it (CLDR's patterns, by Babel): ``1250, "EUR"`` → ``"€12.50"`` in ``en``,
    ``"12,50 €"`` in ``de``; ``500, "JPY"`` → ``"¥500"``; ``1000, "KWD"`` → ``"KWD1.000"``. No currency: the
    number alone."""
    if amount is None:
        return ""
    value = Decimal(amount).scaleb(-minor_units(currency))
    if not currency:
        return format_decimal(value, locale=locale)
    return format_currency(value, currency, locale=locale)


def known_locale(name: str) -> str:
    """``name`` (``en``, ``de-DE``, ``pt_BR``) as a locale Babel knows, in its spelling (``de_DE``); ValueError
    otherwise."""
    try:
        return str(Locale.parse(name.replace("-", "_")))
    except (ValueError, TypeError, UnknownLocaleError) as exc:
        raise ValueError(f"locale {name!r}: not a locale this shop knows (such as en, en_GB, de_DE, ja)") from exc


def stripe_units(currency: str) -> int:
    """Decimal places of Stripe's amounts in ``currency``."""
    if currency in STRIPE_ZERO_DECIMAL:
        return 0
    return 3 if currency in STRIPE_THREE_DECIMAL else 2


def unchargeable(amount: int, currency: str) -> str | None:
    """Why Stripe would refuse to charge ``amount`` (the shop's units) in ``currency``; None when it would not."""
    shift = minor_units(currency) - stripe_units(currency)
    if shift > 0 and amount % 10**shift:
        return f"{currency} is charged in whole units only: the amount must end in {'0' * shift}"
    if currency in STRIPE_THREE_DECIMAL and amount % 10:
        return f"{currency} amounts must end in 0 (Stripe takes three-decimal amounts rounded to the hundredth)"
    return None


def to_stripe(amount: int, currency: str) -> int:
    """``amount`` in the shop's units as Stripe wants it; ValueError for one Stripe would refuse."""
    if problem := unchargeable(amount, currency):
        raise ValueError(f"{amount} in {currency} cannot be charged through Stripe: {problem}")
    shift = stripe_units(currency) - minor_units(currency)
    return amount * 10**shift if shift >= 0 else amount // 10**-shift


def from_stripe(amount: int, currency: str) -> int:
    """An amount as Stripe gives it, in the shop's units."""
    shift = minor_units(currency) - stripe_units(currency)
    return amount * 10**shift if shift >= 0 else amount // 10**-shift
