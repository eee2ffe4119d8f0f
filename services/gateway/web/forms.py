"""Admin form values to API bodies, and the API's refusals back to messages per form field."""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import MultiDict

from services.gateway.web.internal import Answer

TEXT_FIELDS = ("sku", "name", "description", "currency")
FIELD_OF_CODE = {"duplicate_sku": "sku"}  # conflicts the API reports without a field


def number(value: str | None) -> Any:
    """An integer when the field holds one; otherwise as typed, for the API to refuse in its own words."""
    text = (value or "").strip()
    try:
        return int(text)
    except ValueError:
        return text or None


def product_fields(form: MultiDict[str, str], *, new: bool) -> dict[str, Any]:
    """The body of a product create (``new``) or change, from the product form."""
    fields: dict[str, Any] = {name: form.get(name, "").strip() for name in TEXT_FIELDS}
    fields["price_cents"] = number(form.get("price_cents"))
    fields["active"] = form.get("active") == "on"
    if new and form.get("stock", "").strip():
        fields["stock"] = number(form.get("stock"))
    return fields


def problems_of(answer: Answer | None) -> dict[str, str]:
    """Messages by form field (``""``: the form as a whole) for a refused answer; empty for a success."""
    if answer is None or answer.ok:
        return {}
    problems = answer.field_errors()
    field = FIELD_OF_CODE.get(answer.code or "")
    if field:
        problems.setdefault(field, answer.message)
    if not problems or answer.status not in (400, 422):
        problems.setdefault("", answer.message)
    return problems
