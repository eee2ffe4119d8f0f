"""Search and browsing rules without I/O: categories, search words, sorts and cursors."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from cartwheel.contracts.catalog import ListProducts, ProductDraft, ProductPatch
from cartwheel.errors import Invalid
from services.catalog import domain, search

DRAFT = {"sku": "MUG-1", "name": "Mug", "price_cents": 1200, "currency": "EUR"}


def cursor_of(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_categories_are_slugs_at_most_ten_and_kept_once() -> None:
    assert ProductDraft.model_validate(DRAFT).categories == []
    draft = ProductDraft.model_validate({**DRAFT, "categories": ["kitchen", "mugs", "kitchen", "camp-gear"]})
    assert draft.categories == ["kitchen", "mugs", "camp-gear"]
    assert ProductPatch(categories=[]).categories == []


@pytest.mark.parametrize(
    "categories",
    [["Kitchen"], ["has space"], ["-lead"], ["trail-"], ["a--b"], ["x" * 41], [f"c{i}" for i in range(11)], "mugs"],
)
def test_bad_categories_are_refused(categories: object) -> None:
    with pytest.raises(ValidationError):
        ProductDraft.model_validate({**DRAFT, "categories": categories})
    with pytest.raises(ValidationError):
        ProductPatch.model_validate({"categories": categories})


def test_listing_accepts_a_category_and_known_sorts_only() -> None:
    assert ListProducts(category="mugs", sort="price_desc").sort == "price_desc"
    for bad in ({"sort": "cheapest"}, {"category": "Mugs"}):
        with pytest.raises(ValidationError):
            ListProducts.model_validate(bad)


def test_search_words_are_letters_and_digits_lower_cased() -> None:
    assert domain.search_terms("CW-MUG-01") == ["cw", "mug", "01"]
    assert domain.search_terms("  Blue   mug's rim! ") == ["blue", "mug", "s", "rim"]
    assert domain.search_terms("Crème brûlée") == ["crème", "brûlée"]
    assert domain.search_terms("100% _ ;--") == ["100"]
    assert domain.search_terms("%") == [] and domain.search_terms(None) == []
    assert len(domain.search_terms("w " * 100)) == domain.MAX_TERMS


def test_default_sort_is_relevance_when_searching_else_newest() -> None:
    assert domain.resolve_sort(None, searching=True) == "relevance"
    assert domain.resolve_sort(None, searching=False) == "newest"
    assert domain.resolve_sort("relevance", searching=False) == "newest"
    assert domain.resolve_sort("price_asc", searching=True) == "price_asc"


def test_cursors_of_the_unsorted_api_continue_in_insertion_order() -> None:
    assert domain.decode_cursor(cursor_of({"after": 12})) == domain.Position("oldest", None, 12)


@pytest.mark.parametrize(
    "data",
    [
        {"s": "price_asc", "k": "cheap", "i": 1},
        {"s": "name", "k": 5, "i": 1},
        {"s": "newest", "k": 3, "i": 1},
        {"s": "newest", "k": None, "i": -1},
        {"s": "newest", "k": None, "i": True},
        {"s": "random", "k": None, "i": 1},
        {"s": "relevance", "k": 1.5, "i": 1},
        {"after": "x"},
        {"after": 9223372036854775808},  # beyond SQL's BIGINT: OverflowError in SQLite, a 500
        {"s": "price_asc", "k": 2**63, "i": 1},
        [1, 2],
    ],
)
def test_cursors_with_wrong_keys_are_invalid(data: object) -> None:
    with pytest.raises(Invalid):
        domain.decode_cursor(cursor_of(data))


def test_full_text_queries_take_every_word_and_the_last_as_a_prefix() -> None:
    assert search._fts5_query(["blue", "mu"]) == '"blue" AND "mu"*'
    assert search._fts5_query(["mu"], "name") == 'name : ("mu"*)'
    assert search._tsquery(["blue", "mu"]) == "'blue' & 'mu':*"
    assert search._tsquery(["blue", "mu"], "A") == "'blue':A & 'mu':*A"
