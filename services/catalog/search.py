"""Product listings: full-text search, category filter, sorts, keyset pages (stable while products are added).

Every word must match somewhere in name, description or sku; the last word matches as a prefix
(search as you type). Relevance is a whole number, so pages can continue after it: 4 when the name
holds every word, plus 2 for the sku, plus 1 for the description; ties go newest first.
SQLite answers from an FTS5 table (porter stemming), PostgreSQL from a weighted tsvector column ('english').
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, String, and_, case, cast, func, literal, literal_column, or_, select, table
from sqlalchemy.orm import Session
from sqlalchemy.sql import column as sql_column

from cartwheel.contracts.catalog import ListProducts, ProductPage
from cartwheel.errors import Invalid
from services.catalog import domain
from services.catalog.models import ProductRow
from services.catalog.store import to_product

# Points each field adds to the relevance of a product whose field holds every word.
WEIGHTS = {"name": 4, "sku": 2, "description": 1}
FTS = table("products_fts", sql_column("rowid"))  # SQLite's FTS5 index, made by migration 0002
ENGLISH = literal_column("'english'")  # PostgreSQL's text search configuration (regconfig)
PG_WEIGHTS = {"name": "A", "sku": "B", "description": "D"}  # as migration 0003 weighs the search vector


def list_products(session: Session, query: ListProducts) -> ProductPage:
    terms = domain.search_terms(query.q)
    searching = bool(query.q and query.q.strip())
    position = domain.decode_cursor(query.cursor)
    sort = domain.resolve_sort(query.sort or (position.sort if position else None), searching)
    if position and position.sort != sort:
        raise Invalid(
            "cursor belongs to another sort", fields=[{"field": "cursor", "message": "belongs to another sort"}]
        )
    if searching and not terms:
        return ProductPage(items=[])  # nothing a word could match (only punctuation)
    postgres = session.get_bind().dialect.name == "postgresql"
    score = _score(terms, postgres) if terms else literal(0)
    key, key_descending, seq_descending = _order(sort, score)
    statement = select(ProductRow, score)
    if not query.include_inactive:
        statement = statement.where(ProductRow.active.is_(True))
    if terms:
        statement = statement.where(_matches(terms, postgres))
    if query.category:
        statement = statement.where(cast(ProductRow.categories, String).like(f'%"{query.category}"%'))
    if position:
        statement = statement.where(_after(position, key, key_descending, seq_descending))
    seq_order = ProductRow.seq.desc() if seq_descending else ProductRow.seq.asc()
    ordering = [seq_order] if key is None else [key.desc() if key_descending else key.asc(), seq_order]
    rows = list(session.execute(statement.order_by(*ordering).limit(query.limit + 1)))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    next_cursor = None
    if more:
        last, last_score = rows[-1]
        next_cursor = domain.encode_cursor(domain.Position(sort, _key_of(sort, last, last_score), last.seq))
    return ProductPage(items=[to_product(row) for row, _ in rows], next_cursor=next_cursor)


def _order(sort: str, score: ColumnElement[int]) -> tuple[ColumnElement | None, bool, bool]:
    """The sort's key (None: seq alone), whether the key descends, whether seq descends."""
    return {
        "relevance": (score, True, True),
        "newest": (None, False, True),
        "oldest": (None, False, False),
        "price_asc": (ProductRow.price_cents, False, False),
        "price_desc": (ProductRow.price_cents, True, True),
        "name": (func.lower(ProductRow.name), False, False),
    }[sort]


def _key_of(sort: str, row: ProductRow, score: int) -> int | str | None:
    if sort == "relevance":
        return int(score)
    if sort in ("price_asc", "price_desc"):
        return row.price_cents
    return row.name.lower() if sort == "name" else None


def _after(
    position: domain.Position, key: ColumnElement | None, key_descending: bool, seq_descending: bool
) -> ColumnElement[bool]:
    seq_beyond = ProductRow.seq < position.seq if seq_descending else ProductRow.seq > position.seq
    if key is None:
        return seq_beyond
    key_beyond = key < position.key if key_descending else key > position.key
    return or_(key_beyond, and_(key == position.key, seq_beyond))


# -- the two full-text engines -----------------------------------------------------------------


def _fts5_query(terms: list[str], field: str | None = None) -> str:
    words = " AND ".join(f'"{t}"' for t in terms) + "*"  # terms are letters and digits only: nothing to escape
    return f"{field} : ({words})" if field else words


def _tsquery(terms: list[str], weight: str = "") -> str:
    """Every word, the last as a prefix; ``weight`` keeps to the field of that weight (A name, B sku, D description)."""
    words = [f"'{t}':{weight}" if weight else f"'{t}'" for t in terms[:-1]]
    return " & ".join([*words, f"'{terms[-1]}':*{weight}"])


def _matches(terms: list[str], postgres: bool, field: str | None = None) -> ColumnElement[bool]:
    """Products holding every word (in ``field`` alone when given)."""
    if postgres:
        query = func.to_tsquery(ENGLISH, _tsquery(terms, PG_WEIGHTS[field] if field else ""))
        return literal_column("products.search_vector").op("@@")(query)
    hits = select(FTS.c.rowid).where(literal_column(FTS.name).op("MATCH")(_fts5_query(terms, field)))
    return ProductRow.seq.in_(hits)


def _score(terms: list[str], postgres: bool) -> ColumnElement[int]:
    parts = [case((_matches(terms, postgres, field), points), else_=0) for field, points in WEIGHTS.items()]
    return (parts[0] + parts[1] + parts[2]).label("score")
