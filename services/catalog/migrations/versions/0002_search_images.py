"""categories, image fields and the full-text index of products

SQLite: an FTS5 table over name, description and sku, kept in sync by triggers.
PostgreSQL: a generated tsvector column with a GIN index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE products_fts USING fts5(name, description, sku, content='products', "
    "content_rowid='seq', tokenize='porter unicode61')",
    "CREATE TRIGGER products_fts_insert AFTER INSERT ON products BEGIN "
    "INSERT INTO products_fts(rowid, name, description, sku) VALUES (new.seq, new.name, new.description, new.sku); "
    "END",
    "CREATE TRIGGER products_fts_delete AFTER DELETE ON products BEGIN "
    "INSERT INTO products_fts(products_fts, rowid, name, description, sku) "
    "VALUES ('delete', old.seq, old.name, old.description, old.sku); END",
    "CREATE TRIGGER products_fts_update AFTER UPDATE OF name, description, sku ON products BEGIN "
    "INSERT INTO products_fts(products_fts, rowid, name, description, sku) "
    "VALUES ('delete', old.seq, old.name, old.description, old.sku); "
    "INSERT INTO products_fts(rowid, name, description, sku) VALUES (new.seq, new.name, new.description, new.sku); "
    "END",
    "INSERT INTO products_fts(products_fts) VALUES ('rebuild')",
]
POSTGRES_FTS = [
    "ALTER TABLE products ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ("
    "to_tsvector('english', name || ' ' || sku || ' ' || description)) STORED",
    "CREATE INDEX ix_products_search_vector ON products USING gin (search_vector)",
]


def upgrade() -> None:
    op.add_column("products", sa.Column("categories", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("products", sa.Column("image_etag", sa.String(64), nullable=True))
    op.add_column("products", sa.Column("image_type", sa.String(32), nullable=True))
    for statement in SQLITE_FTS if op.get_bind().dialect.name == "sqlite" else POSTGRES_FTS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS products_fts_{trigger}")
        op.execute("DROP TABLE IF EXISTS products_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_products_search_vector")
        op.execute("ALTER TABLE products DROP COLUMN IF EXISTS search_vector")
    with op.batch_alter_table("products") as batch:
        batch.drop_column("image_type")
        batch.drop_column("image_etag")
        batch.drop_column("categories")
