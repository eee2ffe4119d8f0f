"""Catalog domain rules and product contracts, without I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cartwheel.contracts.catalog import ProductDraft, ProductPatch, UpdateProduct
from cartwheel.errors import Invalid
from services.catalog import domain

DRAFT = {"sku": "MUG-1", "name": "Mug", "price_cents": 1200, "currency": "EUR"}


def error_types(exc: ValidationError) -> dict[str, str]:
    return {".".join(map(str, e["loc"])): e["type"] for e in exc.errors()}


def test_draft_defaults() -> None:
    draft = ProductDraft.model_validate(DRAFT)
    assert (draft.description, draft.active, draft.stock) == ("", True, None)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("price_cents", 12.5, "int_type"),
        ("price_cents", 12.0, "int_type"),
        ("price_cents", "1200", "int_type"),
        ("price_cents", -1, "greater_than_equal"),
        ("price_cents", True, "int_type"),
        ("sku", "has space", "string_pattern_mismatch"),
        ("sku", "x" * 65, "string_pattern_mismatch"),
        ("sku", "'; DROP TABLE products; --", "string_pattern_mismatch"),
        ("name", "   ", "string_too_short"),
        ("name", "n" * 201, "string_too_long"),
        ("currency", "eur", "string_pattern_mismatch"),
        ("currency", "XYZ", "value_error"),
        ("active", "yes", "bool_type"),
        ("unknown", 1, "extra_forbidden"),
    ],
)
def test_draft_refuses(field: str, value: object, error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ProductDraft.model_validate({**DRAFT, field: value})
    assert error_types(caught.value)[field] == error


def test_patch_needs_a_field_and_refuses_null() -> None:
    with pytest.raises(ValidationError):
        ProductPatch.model_validate({})
    with pytest.raises(ValidationError):
        ProductPatch.model_validate({"name": None})
    assert ProductPatch.model_validate({"price_cents": 0}).price_cents == 0


def test_update_carries_only_the_given_fields() -> None:
    cmd = UpdateProduct(product_id="p1", patch=ProductPatch(price_cents=5))
    again = UpdateProduct.model_validate_json(cmd.model_dump_json())
    assert again.patch.model_fields_set == {"price_cents"}
    assert (again.id, again.tenant, again.schema_version) == (cmd.id, "default", 1)


def test_changes_ignores_equal_values() -> None:
    current = {"name": "Mug", "price_cents": 1200, "active": True}
    patch = ProductPatch(name="Mug", price_cents=1300)
    assert domain.changes(current, patch) == {"price_cents": 1300}


def test_cursor_round_trip() -> None:
    for position in (
        domain.Position("newest", None, 42),
        domain.Position("price_asc", 1200, 7),
        domain.Position("name", "enamel mug", 3),
        domain.Position("relevance", 5, 9),
    ):
        assert domain.decode_cursor(domain.encode_cursor(position)) == position
    assert domain.decode_cursor(None) is None


@pytest.mark.parametrize("cursor", ["garbage", "e30", "eyJhZnRlciI6ICJ4In0", "eyJhZnRlciI6IC0xfQ", "%%%", "\u00e9"])
def test_made_up_cursors_are_invalid(cursor: str) -> None:
    with pytest.raises(Invalid):
        domain.decode_cursor(cursor)

