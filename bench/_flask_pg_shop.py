"""The baseline of bench/http_flash_sale.py: the one-process Flask shop a Python team would otherwise deploy.

``POST /api/checkout`` takes the shop's body (``{"items": [{"product_id", "quantity"}]}``) and
``Idempotency-Key`` header and answers 201 ``{"order_id", "status", "total_cents", "currency"}``
or 409 ``{"error": {"code": "out_of_stock", ...}}``, in one PostgreSQL transaction per attempt:

1. the order already placed with this Idempotency-Key, if any, is the answer;
2. ``UPDATE stock SET available = available - q WHERE id = %s AND available >= q RETURNING ...``
   for each line (no row: roll back, 409);
3. ``INSERT`` the order (its key is unique: a concurrent retry with the same key loses the race,
   rolls back and answers with the winner's order); commit; 201.

``FLASK_PG_SHOP_SQL=cte`` does the same in one statement (a data-modifying CTE, autocommit) for
single-line checkouts; the tables and what is stored are the same.

Served by gunicorn, one psycopg_pool per worker (``create_app()`` runs in each worker after the
fork); bench/http_flash_sale.py starts and stops it and creates and drops its tables with
:func:`create_tables`, :func:`drop_tables`. Configured by environment variables:

    FLASK_PG_SHOP_DSN                 libpq URL, e.g. postgresql://postgres@127.0.0.1:5432/test
    FLASK_PG_SHOP_TABLES              table name prefix (<prefix>_stock, <prefix>_orders)
    FLASK_PG_SHOP_POOL                connections per worker (16)
    FLASK_PG_SHOP_PREPARE_THRESHOLD   psycopg prepare_threshold: executions before a statement is
                                      prepared server-side (5, psycopg's default; "none": never)
    FLASK_PG_SHOP_JSON                orjson (default) or json
    FLASK_PG_SHOP_SQL                 statements (default) or cte

    gunicorn -k gthread -w 2 --threads 16 --chdir bench '_flask_pg_shop:create_app()'
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from typing import Any

import psycopg
from flask import Flask, Response, request
from psycopg import sql
from psycopg_pool import ConnectionPool

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_QUANTITY = 999


def table_names(prefix: str) -> tuple[sql.Identifier, sql.Identifier]:
    return sql.Identifier(f"{prefix}_stock"), sql.Identifier(f"{prefix}_orders")


def create_tables(dsn: str, prefix: str) -> None:
    stock, orders = table_names(prefix)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(stock, orders))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id text PRIMARY KEY, available integer NOT NULL CHECK (available >= 0), "
            "price_cents integer NOT NULL, currency text NOT NULL)").format(stock))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id text PRIMARY KEY, idempotency_key text NOT NULL UNIQUE, lines text NOT NULL, "
            "total_cents integer NOT NULL, currency text NOT NULL, status text NOT NULL DEFAULT 'awaiting_payment', "
            "created_at timestamptz NOT NULL DEFAULT now())").format(orders))


def drop_tables(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(*table_names(prefix)))


def add_product(dsn: str, prefix: str, product_id: str, stock: int, price_cents: int = 1000) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, 'EUR')").format(table_names(prefix)[0]),
                     (product_id, stock, price_cents))


def stock_and_orders(dsn: str, prefix: str, product_id: str) -> tuple[int, int]:
    """What is still available of ``product_id``, and how many orders hold it."""
    stock, orders = table_names(prefix)
    with psycopg.connect(dsn, autocommit=True) as conn:
        available = conn.execute(sql.SQL("SELECT available FROM {} WHERE id = %s").format(stock),
                                 (product_id,)).fetchone()
        placed = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE lines LIKE %s").format(orders),
                              (f'%"{product_id}"%',)).fetchone()
    assert available is not None and placed is not None
    return available[0], placed[0]


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": {"code": code, "message": message, **details}}


def parse_items(raw: bytes, loads: Callable[[bytes], Any]) -> list[tuple[str, int]]:
    try:
        body = loads(raw)
        items = [(str(i["product_id"]), i["quantity"]) for i in body["items"]]
    except (ValueError, TypeError, KeyError) as error:
        raise Refused(422, "validation_failed", f"items: a list of product_id and quantity ({error})") from None
    if not items or any(type(q) is not int or not 1 <= q <= MAX_QUANTITY for _, q in items):
        raise Refused(422, "validation_failed", f"items: at least one, each quantity 1 to {MAX_QUANTITY}")
    return items


def create_app() -> Flask:
    dsn = os.environ["FLASK_PG_SHOP_DSN"]
    stock, orders = table_names(os.environ.get("FLASK_PG_SHOP_TABLES", "flask_pg_shop"))
    size = int(os.environ.get("FLASK_PG_SHOP_POOL", "1"))
    threshold = os.environ.get("FLASK_PG_SHOP_PREPARE_THRESHOLD", "5")
    one_statement = os.environ.get("FLASK_PG_SHOP_SQL", "cte") == "cte"
    if os.environ.get("FLASK_PG_SHOP_JSON", "orjson") == "orjson":
        import orjson

        loads: Callable[[bytes], Any] = orjson.loads
        dumps: Callable[[Any], bytes | str] = orjson.dumps
    else:
        loads, dumps = json.loads, json.dumps
    pool = ConnectionPool(dsn, min_size=size, max_size=size, open=True, name="flask-pg-shop", kwargs={
        "prepare_threshold": None if threshold == "none" else int(threshold), "autocommit": one_statement})
    pool.wait(30)

    find = sql.SQL("SELECT id, total_cents, currency FROM {} WHERE idempotency_key = %s").format(orders)
    take = sql.SQL("UPDATE {} SET available = available - %s WHERE id = %s AND available >= %s "
                   "RETURNING available, price_cents, currency").format(stock)
    insert = sql.SQL("INSERT INTO {} (id, idempotency_key, lines, total_cents, currency) "
                     "VALUES (%s, %s, %s, %s, %s)").format(orders)
    # All of it at once, for one line: the existing order, else the stock taken and the order placed.
    # A concurrent duplicate key fails the INSERT, and with it the whole statement (the UPDATE too).
    at_once = sql.SQL("""
        WITH existing AS (SELECT id, total_cents, currency FROM {orders} WHERE idempotency_key = %(key)s),
        taken AS (UPDATE {stock} SET available = available - %(q)s
                  WHERE id = %(pid)s AND available >= %(q)s AND NOT EXISTS (SELECT FROM existing)
                  RETURNING available, price_cents * %(q)s AS total_cents, currency),
        placed AS (INSERT INTO {orders} (id, idempotency_key, lines, total_cents, currency)
                   SELECT %(oid)s, %(key)s, %(lines)s, total_cents, currency FROM taken
                   RETURNING id, total_cents, currency)
        SELECT id, total_cents, currency FROM existing UNION ALL SELECT id, total_cents, currency FROM placed
    """).format(orders=orders, stock=stock)

    def placed(row: tuple[str, int, str]) -> Response:
        body = {"order_id": row[0], "status": "awaiting_payment", "total_cents": row[1], "currency": row[2]}
        return Response(dumps(body), status=201, mimetype="application/json")

    def out_of_stock(product_id: str, quantity: int) -> Refused:
        return Refused(409, "out_of_stock", f"not enough stock for {product_id}", product_id=product_id,
                       lines=[{"product_id": product_id, "requested": quantity}])

    def in_statements(conn: psycopg.Connection[Any], key: str, items: list[tuple[str, int]]) -> Response:
        existing = conn.execute(find, (key,)).fetchone()
        if existing is not None:
            conn.rollback()
            return placed(existing)
        total, currency = 0, "EUR"
        for product_id, quantity in items:
            taken = conn.execute(take, (quantity, product_id, quantity)).fetchone()
            if taken is None:
                conn.rollback()
                raise out_of_stock(product_id, quantity)
            total += taken[1] * quantity
            currency = taken[2]
        order_id = "ord_" + secrets.token_hex(10)
        lines = json.dumps([{"product_id": p, "quantity": q} for p, q in items])
        try:
            conn.execute(insert, (order_id, key, lines, total, currency))
            conn.commit()
        except psycopg.errors.UniqueViolation:  # the same key, placed meanwhile: that order is the answer
            conn.rollback()
            return in_statements(conn, key, items)
        return placed((order_id, total, currency))

    def in_one_statement(conn: psycopg.Connection[Any], key: str, product_id: str, quantity: int) -> Response:
        lines = json.dumps([{"product_id": product_id, "quantity": quantity}])
        params = {"key": key, "pid": product_id, "q": quantity, "oid": "ord_" + secrets.token_hex(10), "lines": lines}
        try:
            row = conn.execute(at_once, params).fetchone()
        except psycopg.errors.UniqueViolation:
            row = conn.execute(at_once, params).fetchone()
        if row is None:
            raise out_of_stock(product_id, quantity)
        return placed(row)

    app = Flask(__name__)

    @app.post("/api/checkout")
    def checkout() -> Response:
        try:
            items = parse_items(request.get_data(), loads)
            key = request.headers.get(IDEMPOTENCY_HEADER) or secrets.token_hex(16)
            with pool.connection() as conn:
                if not one_statement:
                    return in_statements(conn, key, items)
                if len(items) == 1:
                    return in_one_statement(conn, key, *items[0])
                conn.autocommit = False  # several lines: the statements, in one transaction
                try:
                    return in_statements(conn, key, items)
                finally:
                    conn.autocommit = True
        except Refused as refusal:
            return Response(dumps(refusal.body), status=refusal.status, mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    return app
