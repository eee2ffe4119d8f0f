"""Money as people read it: integer cents and a currency code, with the currency's own minor units."""

from __future__ import annotations

from decimal import Decimal

from cartwheel.money import minor_units


def money(cents: int | None, currency: str | None) -> str:
    """``1250, "EUR"`` → ``"12.50 EUR"``."""
    if cents is None:
        return ""
    digits = minor_units(currency)
    amount = Decimal(cents).scaleb(-digits)
    return f"{amount:,.{digits}f} {currency or ''}".strip()
