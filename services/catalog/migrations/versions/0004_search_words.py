"""PostgreSQL: the search vector splits words where the search does (at punctuation)

PostgreSQL's parser read "MUG-2024" as "mug" and "-2024" (a signed number), and "sku-7e528b11e59b"
as "sku-7e528b11e59b", a number "7e528" and a word "b11e59b", so a search for the SKU as typed missed
it: the search splits its terms at anything but letters and digits, as SQLite's FTS5 does. Now
punctuation becomes a space before PostgreSQL parses the text; a term the parser still splits (a hex
run) becomes, in the query, a phrase of the same parts the vector holds. SQLite: nothing changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _weighted(words: str) -> str:
    """The weighted vector (name A, sku B, description D) of each field passed through ``words``."""
    return " || ".join(f"setweight(to_tsvector('english', {words.format(field)}), '{weight}')"
                       for field, weight in (("name", "A"), ("sku", "B"), ("description", "D")))


def _search_vector(expression: str) -> None:
    op.execute("ALTER TABLE products DROP COLUMN search_vector")  # drops its index too
    op.execute(f"ALTER TABLE products ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({expression}) STORED")
    op.execute("CREATE INDEX ix_products_search_vector ON products USING gin (search_vector)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _search_vector(_weighted("regexp_replace({}, '[[:punct:]]+', ' ', 'g')"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _search_vector(_weighted("{}"))
