"""PostgreSQL: the search vector weighs its fields (name A, sku B, description D)

Relevance then asks the stored vector which field holds the words (a weight-restricted tsquery)
instead of parsing each matching product's text again. SQLite: nothing changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WEIGHTED = (
    "setweight(to_tsvector('english', name), 'A') || setweight(to_tsvector('english', sku), 'B') || "
    "setweight(to_tsvector('english', description), 'D')"
)
PLAIN = "to_tsvector('english', name || ' ' || sku || ' ' || description)"


def _search_vector(expression: str) -> None:
    op.execute("ALTER TABLE products DROP COLUMN search_vector")  # drops its index too
    op.execute(f"ALTER TABLE products ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({expression}) STORED")
    op.execute("CREATE INDEX ix_products_search_vector ON products USING gin (search_vector)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _search_vector(WEIGHTED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _search_vector(PLAIN)
