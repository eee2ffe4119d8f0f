"""one cart, at most one open order (a unique index on cart_id over the orders that hold stock)

A database from before may hold a cart with two open orders (two clicks on "Place order"): all but
the newest lose their link to the cart first. They stay orders, payable until they expire; paying
one of them no longer closes the cart.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OPEN = "status IN ('awaiting_payment', 'payment_failed', 'reserved')"  # the statuses that held stock then


def upgrade() -> None:
    op.execute(
        f"UPDATE orders SET cart_id = NULL WHERE cart_id IS NOT NULL AND {OPEN} AND seq NOT IN "
        f"(SELECT MAX(seq) FROM orders WHERE cart_id IS NOT NULL AND {OPEN} GROUP BY cart_id)"
    )
    op.create_index("ux_orders_open_cart", "orders", ["cart_id"], unique=True,
                    sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))


def downgrade() -> None:
    op.drop_index("ux_orders_open_cart", table_name="orders")
