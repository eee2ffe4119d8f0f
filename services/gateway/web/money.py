"""Money as people read it: integer cents and a currency code, with the currency's own minor units."""

from __future__ import annotations

from decimal import Decimal

NO_MINOR_UNITS = frozenset(
    ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]
)
THREE_MINOR_UNITS = frozenset(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"])


def minor_units(currency: str | None) -> int:
    if currency in NO_MINOR_UNITS:
        return 0
    return 3 if currency in THREE_MINOR_UNITS else 2


def money(cents: int | None, currency: str | None) -> str:
    """``1250, "EUR"`` → ``"12.50 EUR"``."""
    if cents is None:
        return ""
    digits = minor_units(currency)
    amount = Decimal(cents).scaleb(-digits)
    return f"{amount:,.{digits}f} {currency or ''}".strip()
