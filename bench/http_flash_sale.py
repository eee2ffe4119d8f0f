"""Flash sale through HTTP: the whole shop under wrk, next to the Flask + PostgreSQL shop a Python team would deploy.

Starts the shop the way `cartwheel up` does (free ports, a temporary var dir, SQLite per service,
localstripe as the embedded payment server; ``--db postgresql+psycopg://...`` puts every service and
the gateway on PostgreSQL instead, each in a new database made for the repeat and dropped after it),
then runs the scenarios, each on products of its own:

- ``single``: one shopper alone, no other load (a ``requests.Session``, keeping its cookies): 200
  sequential buy-now checkouts (``POST /api/checkout``, an Idempotency-Key each) of a product of its
  own, 200 product reads (``GET /api/products/{id}``) and 200 add-to-carts (``POST /api/cart/items``),
  each after 10 unmeasured; p50/p99 of each.
- ``sale``: one product with ``--stock`` units (1,000); wrk with ``--connections`` (200) for
  ``--duration`` s (15), every request a buy-now checkout of one unit with an Idempotency-Key of its
  own (a random prefix per load, the wrk thread's number, the thread's count). Attempts/s (every
  answer), checkouts/s (201s), p50/p90/p99, answers by status (``status_201``, ``status_409``
  out_of_stock, ``status_other_4xx``, ``status_5xx``) and socket errors. Then, once the checkouts in
  flight when wrk stopped have finished: the product's inventory (``GET /api/admin/inventory/{id}``)
  and its orders holding stock (``GET /api/admin/orders?status=`` pending, reserved and
  awaiting_payment, 200 a page). ``ok``: exactly ``--stock`` sold (201s, orders and inventory:
  reserved == stock, available == 0), none oversold, no 5xx, no socket errors; ``checks`` says which.
- ``open``: the same load (``--open-connections``) on a product with more stock than it can sell
  (``--open-stock``, 1,000,000): every checkout reserves and creates a PaymentIntent at the payment
  server, as a sale does before it sells out; checkouts/s and latency.
- ``add_to_cart``: bench/cart.py's ``http_add_to_cart``: ``--carts`` carts opened first (one add
  each, their cookies kept), then wrk adds the next of ``--products`` products to the next cart, at
  ``--cart-connections`` (100, as cart.py).
- ``product_read``: bench/catalog_http.py's ``product_by_id``: wrk reads the ``--products`` products
  in turn, at ``--read-connections`` (64, as catalog_http.py).
- ``baseline``: with the shop stopped, bench/_flask_pg_shop.py (one Flask app on gunicorn, a
  psycopg_pool per worker, PostgreSQL at ``--baseline-db``, its own tables made and dropped here)
  under the same wrk loads: lines ``baseline_sale`` (with the same checks, read from its tables)
  and ``baseline_open``.

Every wrk load is preceded by ``--warmup`` s (2) of the same load, unmeasured (checkouts buy a
warm-up product with plenty of stock, so the sale's units are untouched). wrk waits
``--wrk-timeout`` s (30) for an answer rather than its default 2 s, so a slow answer shows in the
percentiles instead of as a socket error.

``cpu_cores``: CPU seconds per wall second during the measurement of each process role (gateway =
gunicorn master and workers; nats-server, each service, localstripe; the baseline's ``gunicorn``;
``postgres``: every PostgreSQL process, with ``--db`` and for the baseline; ``wrk``; ``client``:
this process, in ``single``), ``host``: the whole machine, and ``elsewhere``: host minus the roles,
i.e. other load on the machine (about 0.15 when it is quiet: a figure measured with more is not the
shop's alone).

Prints one JSON line per scenario per repeat, then a summary line: the median of every figure over
the repeats (``medians``), the ratios to the baseline (``ratios``: sale attempts/s, open
checkouts/s), and each target as ``{"target", "measured", "met"}`` (the correctness ones must hold
in every repeat, ``per_repeat`` shows each): sale attempts/s >= 1.0x the baseline's, sale p99 <=
100 ms, exactly ``--stock`` sold, 0 oversold, 0 5xx, 0 socket errors; open >= 250 checkouts/s, p99
<= 300 ms; add_to_cart >= 2,000/s, p99 <= 50 ms, no errors; product_read >= 3,000/s, p99 <= 50 ms,
no errors; single checkout p50 <= 10 ms. Not part of the test run. Needs wrk (Debian package
``wrk``), PostgreSQL for the baseline, and the dev extras (psycopg-pool, orjson).

    python bench/http_flash_sale.py                              # everything once, 15 s per load
    python bench/http_flash_sale.py --repeat 3                   # the summary takes medians of 3
    python bench/http_flash_sale.py --duration 5 --scenario sale --scenario baseline
    python bench/http_flash_sale.py --scenario sale --db postgresql+psycopg://postgres@127.0.0.1:5432/test

The baseline, tuned
-------------------
Measured here (2 cores; wrk -t2, 200 connections, 10 s after 2 s of warm-up, the shop stopped,
``elsewhere`` about 0.15; ranges are separate runs), sale at S=1,000 then open:

    variant                                       sale att/s  sale p99  open ck/s  open p99
    gthread 2x16, pool 16, three statements         990-1,215  560-850    416-560   630-790 ms
      json instead of orjson                          1,166       951         488       896
      prepare_threshold none (never prepare)          1,134       597         426       850
      prepare_threshold 0 (prepare at once)             944       828         496       698
      gthread 2x8, pool 8                             1,174       512         632       537
      gthread 3x16 / 4x8 (pool 8)                 1,138/1,133  761/566    488/561   923/733
      sync 4 / 8 workers, pool 1                  1,411/1,188  260/379    952/711   287/426
    one statement (cte), gthread 2x16, pool 16   1,677-1,703  215-241  1,226-1,284 265-283
      gthread 2x16, pool 4                            1,832       261       1,064       341
      gthread 2x8, pool 8                         1,583-1,858  183-283  1,334-1,533 207-262
      gthread 2x4, pool 4 / 3x8 / 4x4             1,826/1,911/1,776-1,887  1,345/1,341/1,010-1,375
      sync 3 workers, pool 1                      1,493-1,878  181-218  1,040-1,350 179-307
      sync 4 workers, pool 1 (kept)               1,882-1,999  158-183  1,040-1,451 226-252
      sync 5 / 6 workers                          1,882/1,896  166/160  1,361/1,326 174/228
      sync 4, json instead of orjson                  1,844       167       1,389       173
      sync 4, synchronous_commit=off (not kept)       1,901       181       1,735       143

Kept (the defaults of the ``--baseline-*`` options): gunicorn sync workers x 4 (one PostgreSQL
connection each), the checkout as one data-modifying CTE in autocommit (the lookup, the UPDATE and
the INSERT in one statement, so one transaction and one round trip), psycopg preparing it after 5
executions (its default), orjson. What decided it: a sale is mostly 409s once sold out, which take
no lock, so attempts/s is CPU: gunicorn ~1.4 cores, PostgreSQL ~0.2, wrk ~0.2 of the 2; a process
per request beats threads handing the GIL around, though each answer closes its connection. While
stock lasts (and in ``open``) every checkout waits for the hot row's lock, held until the previous
checkout's commit is flushed to the WAL: three statements and a COMMIT, each a round trip through
a Python thread waiting for its turn at the GIL, hold it longer than one statement does (open
416-560/s against 1,226-1,284/s with the same workers). ``synchronous_commit=off``
(open 1,735/s) is not kept: a crash of the machine would lose orders that were answered 201.

Comparing the two: the baseline's checkout asks no payment server for a PaymentIntent (the shop's
does, at localstripe) and looks up no product in a catalog; on SQLite the shop commits in WAL mode
with synchronous=NORMAL (no flush per commit), the baseline flushes every commit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import requests
from _flask_pg_shop import add_product, create_tables, drop_tables, stock_and_orders
from _load import ONE_ADDRESS_IS_MANY_CLIENTS, CpuMeter, cpu_seconds, percentile
from _wrk import run_wrk
from cart import LUA as CART_LUA
from cart import children_cpu_s, descendants, make_products, open_carts, roles
from catalog_http import LUA as READ_LUA
from psycopg import sql
from sqlalchemy.engine import make_url

from cartwheel import natsserver
from cartwheel.natsserver import free_port
from cartwheel.settings import DATABASES, Settings
from cartwheel.supervisor import PAYMENT_SERVER, System

BENCH = Path(__file__).resolve().parent
SCENARIOS = ("single", "sale", "open", "add_to_cart", "product_read", "baseline")
SHOP_SCENARIOS = SCENARIOS[:-1]
DEFAULT_BASELINE_DB = "postgresql://postgres@127.0.0.1:5432/test"
WARMUP_STOCK = 10_000_000
SINGLE_REQUESTS = 200
SINGLE_WARMUP = 10
ORDERS_PAGE = 200  # the most GET /api/admin/orders gives at once (OrderListQuery.limit)
HOLDS_STOCK = ("pending", "reserved", "awaiting_payment")  # what an order is in while it holds its units

# wrk: every request buys one unit of one product, with an Idempotency-Key of its own: this run's
# random prefix, the wrk thread's number and the thread's request count.
CHECKOUT_LUA = """
local body = %(body)s
local prefix = "%(prefix)s"
local headers = {["Content-Type"] = "application/json"}
local threads = 0
tid = 0
n = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  n = n + 1
  headers["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. n
  return wrk.format("POST", "/api/checkout", headers, body)
end
"""


# ---------------------------------------------------------------- CPU of the processes under load


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


class Cpu:
    """CPU cores busy per role during one measurement: ``roles`` (fixed pids, via CpuMeter), PostgreSQL's
    processes (backends come and go: each counts from when it is first seen) and wrk (this process's
    waited-for children)."""

    def __init__(self, roles: dict[str, list[int]], postgres: bool) -> None:
        self.meter = CpuMeter(roles)
        self.postgres = postgres
        self.pg_before: dict[int, float | None] = {}
        self.wrk_before = 0.0
        self.began = 0.0

    def start(self) -> None:
        if self.postgres:
            self.pg_before = {pid: cpu_seconds(pid) for pid in postgres_pids()}
        self.wrk_before = children_cpu_s()
        self.began = time.monotonic()
        self.meter.start()

    def stop(self, *, wrk: bool = True) -> dict[str, float | None]:
        """``wrk``: wrk made the load (this process only waited for it); else this process did (``client``)."""
        cpu = self.meter.stop()
        wall = time.monotonic() - self.began
        if wrk:
            del cpu["client"]
            cpu["wrk"] = round((children_cpu_s() - self.wrk_before) / wall, 2)
        if self.postgres:
            used = 0.0
            for pid in postgres_pids():
                now, before = cpu_seconds(pid), self.pg_before.get(pid)
                if now is not None:
                    used += now - (before or 0.0)
            cpu["postgres"] = round(used / wall, 2)
        if cpu.get("host") is not None:  # busy outside the processes above: other load on the machine
            cpu["elsewhere"] = round(cpu["host"] - sum(v for k, v in cpu.items() if k != "host" and v), 2)
        return cpu


def shop_roles(shop: System) -> dict[str, list[int]]:
    out = roles(shop)
    payment_server = shop.children.all.get(PAYMENT_SERVER)
    if payment_server is not None and payment_server.alive:
        out[PAYMENT_SERVER] = descendants(payment_server.process.pid)
    return out


# ---------------------------------------------------------------- wrk loads


def ms(us: int) -> float:
    return round(us / 1000, 2)


def wrk_load(base_url: str, script: str, cpu: Cpu, args: argparse.Namespace, connections: int, duration: int,
             *, statuses: bool = False) -> dict[str, Any]:
    """Run wrk with ``script``; its figures and the CPU of every role meanwhile."""
    cpu.start()
    r = run_wrk(base_url, script, threads=min(args.threads, connections), connections=connections,
                duration=duration, statuses=statuses, timeout_s=args.wrk_timeout)
    cores = cpu.stop()
    seconds = r["duration_us"] / 1e6
    figures: dict[str, Any] = {
        "requests_per_s": round(r["requests"] / seconds, 1),
        "p50_ms": ms(r["p50_us"]), "p90_ms": ms(r["p90_us"]), "p99_ms": ms(r["p99_us"]), "max_ms": ms(r["max_us"]),
        "requests": r["requests"],
        "non_2xx": r["non_2xx"],
        "socket_errors": r["socket_errors"],
        "elapsed_s": round(seconds, 2),
        "connections": connections,
        "load_generator": f"wrk -t{min(args.threads, connections)} --timeout {args.wrk_timeout:g}s",
    }
    if statuses:
        counts = {int(code): n for code, n in (r["statuses"] or {}).items()}
        figures |= {
            "statuses": {str(code): counts[code] for code in sorted(counts)},
            "checkouts_per_s": round(counts.get(201, 0) / seconds, 1),
            "status_201": counts.get(201, 0),
            "status_409": counts.get(409, 0),
            "status_other_4xx": sum(n for code, n in counts.items() if 400 <= code < 500 and code != 409),
            "status_5xx": sum(n for code, n in counts.items() if code >= 500),
            "status_other": sum(n for code, n in counts.items() if code < 400 and code != 201),
        }
    figures["cpu_cores"] = cores
    return figures


def checkout_script(product_id: str) -> str:
    body = json.dumps({"items": [{"product_id": product_id, "quantity": 1}]})
    return CHECKOUT_LUA % {"body": json.dumps(body), "prefix": secrets.token_hex(6)}


def checkout_load(base_url: str, product_id: str, cpu: Cpu, args: argparse.Namespace, connections: int,
                  warmup_product: str | None) -> dict[str, Any]:
    """Warm up on ``warmup_product`` (plenty of stock), then ``--duration`` s of buy-now checkouts of
    ``product_id``: attempts/s, checkouts (201)/s, latency and the answers by status."""
    if args.warmup and warmup_product is not None:
        wrk_load(base_url, checkout_script(warmup_product), cpu, args, connections, args.warmup, statuses=True)
    figures = wrk_load(base_url, checkout_script(product_id), cpu, args, connections, args.duration, statuses=True)
    return {"attempts_per_s": figures.pop("requests_per_s"), "checkouts_per_s": figures.pop("checkouts_per_s"),
            **figures}


def verdict(figures: dict[str, Any], stock: int, orders: int, reserved: int, available: int) -> dict[str, Any]:
    """The sale's correctness: exactly ``stock`` sold (answers, orders, inventory), none oversold, no 5xx."""
    sold = figures["status_201"]
    checks = {
        "sold_is_stock": sold == stock,
        "orders_is_stock": orders == stock,
        "inventory_sold_out": reserved == stock and available == 0,
        "not_oversold": max(sold, orders, reserved) <= stock,
        "no_5xx": figures["status_5xx"] == 0,
        "no_socket_errors": figures["socket_errors"] == 0,
    }
    return {"stock": stock, "sold": sold, "orders_holding_stock": orders,
            "oversold": max(0, max(sold, orders, reserved) - stock), "checks": checks, "ok": all(checks.values())}


# ---------------------------------------------------------------- reading the shop back


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Admin:
    def __init__(self, shop: System) -> None:
        self.base_url = shop.base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {shop.admin_token}"

    def get(self, path: str, **params: Any) -> Any:
        resp = self.session.get(f"{self.base_url}{path}", params=params, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def inventory(self, product_id: str) -> dict[str, int]:
        return self.get(f"/api/admin/inventory/{product_id}")

    def orders_of(self, product_id: str, since: datetime) -> dict[str, int]:
        """Orders holding stock of ``product_id`` (placed after ``since``), by status, from the admin orders list."""
        counts = dict.fromkeys(HOLDS_STOCK, 0)
        for status in HOLDS_STOCK:
            cursor = None
            while True:
                page = self.get("/api/admin/orders", status=status, limit=ORDERS_PAGE,
                                **({"cursor": cursor} if cursor else {}))
                for order in page["items"]:
                    counts[status] += any(line["product_id"] == product_id for line in order["lines"])
                cursor = page["next_cursor"]
                # newest first: a page that reaches back before the scenario is the last one needed
                if cursor is None or aware(datetime.fromisoformat(page["items"][-1]["created_at"])) < since:
                    break
        return counts

    def settled(self, product_id: str, since: datetime, timeout: float = 60) -> tuple[dict[str, int], dict[str, int]]:
        """Orders by status and inventory once checkouts still under way when wrk stopped have finished."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            orders, stock = self.orders_of(product_id, since), self.inventory(product_id)
            now = (orders, stock)
            if (now == last and orders["pending"] == orders["reserved"] == 0) or time.monotonic() > deadline:
                return orders, stock
            last = now
            time.sleep(1)


# ---------------------------------------------------------------- the shop's scenarios


def fresh_product(shop: System, stock: int, what: str) -> str:
    product = make_products(shop.base_url, shop.admin_token, 1, stock=stock,
                            sku_prefix=f"FLASH-{what}-{secrets.token_hex(4)}")
    return str(product[0]["id"])


def sale(shop: System, cpu: Cpu, args: argparse.Namespace, warmup_product: str) -> dict[str, Any]:
    product = fresh_product(shop, args.stock, "sale")
    since = datetime.now(UTC) - timedelta(seconds=5)
    figures = checkout_load(shop.base_url, product, cpu, args, args.connections, warmup_product)
    orders, stock = Admin(shop).settled(product, since)
    held = sum(orders.values())
    return {**figures, **verdict(figures, args.stock, held, stock["reserved"], stock["available"]),
            "orders_by_status": orders, "inventory": stock}


def open_sale(shop: System, cpu: Cpu, args: argparse.Namespace, warmup_product: str) -> dict[str, Any]:
    product = fresh_product(shop, args.open_stock, "open")
    figures = checkout_load(shop.base_url, product, cpu, args, args.open_connections, warmup_product)
    time.sleep(1)  # checkouts under way when wrk stopped
    return {**figures, "stock": args.open_stock, "inventory": Admin(shop).inventory(product)}


def add_to_cart(shop: System, cpu: Cpu, args: argparse.Namespace, products: list[dict[str, Any]],
                cookies: list[str]) -> dict[str, Any]:
    script = CART_LUA % {"cookies": ", ".join(json.dumps(c) for c in cookies),
                         "products": ", ".join(json.dumps(p["id"]) for p in products),
                         "method": "POST", "path": "/api/cart/items", "offset": 7919}
    if args.warmup:
        wrk_load(shop.base_url, script, cpu, args, args.cart_connections, args.warmup)
    return wrk_load(shop.base_url, script, cpu, args, args.cart_connections, args.duration)


def product_read(shop: System, cpu: Cpu, args: argparse.Namespace, products: list[dict[str, Any]]) -> dict[str, Any]:
    script = READ_LUA % {"paths": ", ".join(json.dumps(f"/api/products/{p['id']}") for p in products),
                         "method": "GET", "patch": "false", "token": shop.admin_token}
    if args.warmup:
        wrk_load(shop.base_url, script, cpu, args, args.read_connections, args.warmup)
    return wrk_load(shop.base_url, script, cpu, args, args.read_connections, args.duration)


def single(shop: System, cpu: Cpu, products: list[dict[str, Any]]) -> dict[str, Any]:
    """One shopper alone: sequential buy-now checkouts (own product), product reads, add-to-carts."""
    product = fresh_product(shop, WARMUP_STOCK, "single")
    body = {"items": [{"product_id": product, "quantity": 1}]}
    prefix = secrets.token_hex(6)
    base = shop.base_url
    kinds: dict[str, Callable[[requests.Session, int], requests.Response]] = {
        "checkout": lambda s, i: s.post(f"{base}/api/checkout", json=body, timeout=30,
                                        headers={"Idempotency-Key": f"{prefix}-{i}"}),
        "product_read": lambda s, i: s.get(f"{base}/api/products/{products[i % len(products)]['id']}", timeout=30),
        "add_to_cart": lambda s, i: s.post(f"{base}/api/cart/items", timeout=30,
                                           json={"product_id": products[i % len(products)]["id"], "quantity": 1}),
    }
    figures: dict[str, Any] = {"requests_each": SINGLE_REQUESTS, "load_generator": "requests.Session, sequential"}
    cpu.start()
    for kind, call in kinds.items():
        latencies: list[float] = []
        failed = 0
        with requests.Session() as session:  # one shopper: keeps their cookies (cart, orders)
            for i in range(SINGLE_WARMUP + SINGLE_REQUESTS):
                began = time.perf_counter()
                resp = call(session, i)
                took = (time.perf_counter() - began) * 1000
                if i >= SINGLE_WARMUP:
                    latencies.append(took)
                    failed += not resp.ok
        figures |= {f"{kind}_p50_ms": percentile(latencies, 50), f"{kind}_p99_ms": percentile(latencies, 99),
                    f"{kind}_failed": failed}
    figures["cpu_cores"] = cpu.stop(wrk=False)
    return figures


# ---------------------------------------------------------------- the shop, per repeat


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_databases(db: str | None) -> Iterator[dict[str, str]]:
    """With ``--db``: a new PostgreSQL database per service (and the gateway), dropped afterwards."""
    if db is None:
        yield {}
        return
    base = make_url(db)
    names = {name: f"cw_flash_{secrets.token_hex(4)}_{name}" for name in DATABASES}
    made: list[str] = []
    try:
        with psycopg.connect(libpq_url(db), autocommit=True) as conn:
            for name in names.values():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                made.append(name)
        yield {f"{service}_database_url": base.set(database=name).render_as_string(hide_password=False)
               for service, name in names.items()}
    finally:
        with psycopg.connect(libpq_url(db), autocommit=True) as conn:
            for name in made:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def running_shop(args: argparse.Namespace) -> Iterator[System]:
    var_dir = Path(tempfile.mkdtemp(prefix="cw-http-flash-"))
    try:
        with fresh_databases(args.db) as urls:
            settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", gateway_port=free_port(),
                        **ONE_ADDRESS_IS_MANY_CLIENTS,
                                gateway_workers=args.workers, metrics_port=0, log_level="WARNING", **urls)
            with (var_dir / "system.log").open("w") as log, System(settings, out=log, colour=False, seed=False) as shop:
                yield shop
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


def shop_scenarios(args: argparse.Namespace, wanted: list[str], emit: Callable[[str, dict[str, Any]], None]) -> None:
    with running_shop(args) as shop:
        cpu = Cpu(shop_roles(shop), postgres=args.db is not None)
        products: list[dict[str, Any]] = []
        if {"single", "add_to_cart", "product_read"} & set(wanted):
            products = make_products(shop.base_url, shop.admin_token, args.products,
                                     sku_prefix=f"FLASH-cart-{secrets.token_hex(4)}")
        warmup_product = fresh_product(shop, WARMUP_STOCK, "warmup") if {"sale", "open"} & set(wanted) else None
        for name in wanted:
            if name == "single":
                emit(name, single(shop, cpu, products))
            elif name == "sale":
                assert warmup_product is not None
                emit(name, sale(shop, cpu, args, warmup_product))
            elif name == "open":
                assert warmup_product is not None
                emit(name, open_sale(shop, cpu, args, warmup_product))
            elif name == "add_to_cart":
                cookies = open_carts(shop.base_url, products, args.carts)
                emit(name, add_to_cart(shop, cpu, args, products, cookies))
            elif name == "product_read":
                emit(name, product_read(shop, cpu, args, products))


# ---------------------------------------------------------------- the baseline


@contextlib.contextmanager
def baseline_server(args: argparse.Namespace, dsn: str, tables: str) -> Iterator[tuple[str, list[int]]]:
    """gunicorn serving bench/_flask_pg_shop.py on a free port: its URL and processes; stopped by its PID."""
    port = free_port()
    env = {**os.environ, "FLASK_PG_SHOP_DSN": dsn, "FLASK_PG_SHOP_TABLES": tables,
           "FLASK_PG_SHOP_POOL": str(args.baseline_pool), "FLASK_PG_SHOP_JSON": args.baseline_json,
           "FLASK_PG_SHOP_PREPARE_THRESHOLD": args.baseline_prepare_threshold, "FLASK_PG_SHOP_SQL": args.baseline_sql}
    argv = [sys.executable, "-m", "gunicorn", "-k", args.baseline_worker_class, "-w", str(args.baseline_workers),
            "--threads", str(args.baseline_threads), "-b", f"127.0.0.1:{port}", "--backlog", "2048",
            "--keep-alive", "5", "--log-level", "warning", "--chdir", str(BENCH), "_flask_pg_shop:create_app()"]
    fd, name = tempfile.mkstemp(prefix="cw-flask-pg-shop-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "ab") as log:
        process = natsserver.spawn(argv, output=log, env=env, cwd=BENCH)  # own process group, dies with us
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the baseline exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the baseline did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        time.sleep(1)  # every worker up, its pool filled
        yield url, descendants(process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # gunicorn's master stops its workers
            try:
                process.wait(15)
            except Exception:
                process.kill()
                process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # any worker its master left behind
        log_path.unlink(missing_ok=True)


def baseline(args: argparse.Namespace, emit: Callable[[str, dict[str, Any]], None]) -> None:
    dsn = libpq_url(args.baseline_db)
    tables = f"flask_pg_shop_{secrets.token_hex(4)}"
    sale_product, open_product, warmup_product = "sale", "open", "warmup"
    try:
        create_tables(dsn, tables)
        add_product(dsn, tables, sale_product, args.stock)
        add_product(dsn, tables, open_product, args.open_stock)
        add_product(dsn, tables, warmup_product, WARMUP_STOCK)
        with baseline_server(args, dsn, tables) as (url, pids):
            cpu = Cpu({"gunicorn": pids}, postgres=True)
            config = {"worker_class": args.baseline_worker_class, "workers": args.baseline_workers,
                      "threads": args.baseline_threads,
                      "pool_per_worker": args.baseline_pool, "json": args.baseline_json,
                      "prepare_threshold": args.baseline_prepare_threshold, "sql": args.baseline_sql}
            figures = checkout_load(url, sale_product, cpu, args, args.connections, warmup_product)
            available, orders = stock_and_orders(dsn, tables, sale_product)
            reserved = args.stock - available
            emit("baseline_sale", {**figures, **verdict(figures, args.stock, orders, reserved, available),
                                   "inventory": {"on_hand": args.stock, "reserved": reserved, "available": available},
                                   "baseline": config})
            figures = checkout_load(url, open_product, cpu, args, args.open_connections, warmup_product)
            emit("baseline_open", {**figures, "stock": args.open_stock, "baseline": config})
    finally:
        drop_tables(dsn, tables)


# ---------------------------------------------------------------- summary


def median_of(rows: list[Any]) -> Any:
    """Medians of numbers, field by field of dicts (recursively); all() of booleans; else the first."""
    if all(isinstance(r, bool) for r in rows):
        return all(rows)
    if all(isinstance(r, int | float) and not isinstance(r, bool) for r in rows):
        return round(statistics.median(rows), 2)
    if all(isinstance(r, dict) for r in rows):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return {k: median_of([r[k] for r in rows if k in r and r[k] is not None]) for k in keys}
    return rows[0] if rows else None


def check(target: str, measured: Any, met: bool, per_repeat: list[Any] | None = None) -> dict[str, Any]:
    out = {"target": target, "measured": measured, "met": met}
    if per_repeat is not None and len(per_repeat) > 1:
        out["per_repeat"] = per_repeat
    return out


def summary(runs: list[dict[str, dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    names = list(dict.fromkeys(name for run in runs for name in run))
    med = {name: median_of([run[name] for run in runs if name in run]) for name in names}
    each = {name: [run[name] for run in runs if name in run] for name in names}
    ratios: dict[str, float | None] = {}
    targets: dict[str, dict[str, Any]] = {}

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    if "sale" in med and "baseline_sale" in med:
        ratios["sale_attempts_vs_baseline"] = r = ratio(med["sale"]["attempts_per_s"],
                                                        med["baseline_sale"]["attempts_per_s"])
        targets["sale_attempts_vs_baseline"] = check(">= 1.0", r, r is not None and r >= 1.0)
    if "open" in med and "baseline_open" in med:
        ratios["open_checkouts_vs_baseline"] = ratio(med["open"]["checkouts_per_s"],
                                                     med["baseline_open"]["checkouts_per_s"])
    if "sale" in med:
        sales = each["sale"]
        targets["sale_p99_ms"] = check("<= 100", med["sale"]["p99_ms"], med["sale"]["p99_ms"] <= 100)
        sold = [s["sold"] for s in sales]
        targets["sale_sold"] = check(f"== {args.stock}", med["sale"]["sold"],
                                     all(s["checks"]["sold_is_stock"] and s["checks"]["orders_is_stock"]
                                         and s["checks"]["inventory_sold_out"] for s in sales), sold)
        oversold = [s["oversold"] for s in sales]
        targets["sale_oversold"] = check("== 0", max(oversold), max(oversold) == 0, oversold)
        errors = [s["status_5xx"] for s in sales]
        targets["sale_5xx"] = check("== 0", max(errors), max(errors) == 0, errors)
        errors = [s["socket_errors"] for s in sales]
        targets["sale_socket_errors"] = check("== 0", max(errors), max(errors) == 0, errors)
    if "open" in med:
        m = med["open"]
        targets["open_checkouts_per_s"] = check(">= 250", m["checkouts_per_s"], m["checkouts_per_s"] >= 250)
        targets["open_p99_ms"] = check("<= 300", m["p99_ms"], m["p99_ms"] <= 300)
    for name, rate in (("add_to_cart", 2000), ("product_read", 3000)):
        if name in med:
            m = med[name]
            targets[f"{name}_per_s"] = check(f">= {rate}", m["requests_per_s"], m["requests_per_s"] >= rate)
            targets[f"{name}_p99_ms"] = check("<= 50", m["p99_ms"], m["p99_ms"] <= 50)
            errors = [r["non_2xx"] + r["socket_errors"] for r in each[name]]
            targets[f"{name}_errors"] = check("== 0", max(errors), max(errors) == 0, errors)
    if "single" in med:
        p50 = med["single"]["checkout_p50_ms"]
        targets["single_checkout_p50_ms"] = check("<= 10", p50, p50 is not None and p50 <= 10)
    return {"bench": "http_flash_sale", "summary": True, "repeats": len(runs),
            "db": "postgresql" if args.db else "sqlite", "medians": med, "ratios": ratios, "targets": targets,
            "all_met": all(t["met"] for t in targets.values())}


# ---------------------------------------------------------------- main


def interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # SIGTERM too: the finally blocks stop what was started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, help="run everything this often; the summary takes medians")
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per wrk scenario")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each wrk scenario")
    parser.add_argument("--stock", type=int, default=1000, help="units on sale in `sale`")
    parser.add_argument("--connections", type=int, default=200, help="wrk connections in `sale`")
    parser.add_argument("--open-stock", type=int, default=1_000_000, help="units in `open` (more than it sells)")
    parser.add_argument("--open-connections", type=int, default=200, help="wrk connections in `open`")
    parser.add_argument("--cart-connections", type=int, default=100, help="wrk connections in `add_to_cart`")
    parser.add_argument("--read-connections", type=int, default=64, help="wrk connections in `product_read`")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--wrk-timeout", type=float, default=30, help="seconds before wrk counts a request lost")
    parser.add_argument("--carts", type=int, default=1000, help="carts `add_to_cart` adds to (opened first)")
    parser.add_argument("--products", type=int, default=50, help="products `add_to_cart`/`product_read` use")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--db", help="run every service on PostgreSQL (postgresql+psycopg://...): a fresh "
                        "database per service per repeat, dropped after; default SQLite in a temp dir")
    parser.add_argument("--baseline-db", default=DEFAULT_BASELINE_DB, help="the baseline's PostgreSQL")
    parser.add_argument("--baseline-worker-class", default="sync", choices=("sync", "gthread"))
    parser.add_argument("--baseline-workers", type=int, default=4)
    parser.add_argument("--baseline-threads", type=int, default=16, help="per worker (gthread only)")
    parser.add_argument("--baseline-pool", type=int, help="PostgreSQL connections per worker "
                        "(default: 1 for sync workers, --baseline-threads for gthread)")
    parser.add_argument("--baseline-json", default="orjson", choices=("orjson", "json"))
    parser.add_argument("--baseline-prepare-threshold", default="5", help="psycopg prepare_threshold, or none")
    parser.add_argument("--baseline-sql", default="cte", choices=("cte", "statements"))
    args = parser.parse_args()
    gthread = args.baseline_worker_class == "gthread"
    args.baseline_threads = args.baseline_threads if gthread else 1
    args.baseline_pool = args.baseline_pool or args.baseline_threads
    if not shutil.which("wrk"):
        print("bench/http_flash_sale.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    wanted = [name for name in SCENARIOS if not args.scenario or name in args.scenario]
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where started with SIGINT ignored (`cmd &`)

    runs: list[dict[str, dict[str, Any]]] = []
    for repeat in range(1, args.repeat + 1):
        run: dict[str, dict[str, Any]] = {}
        runs.append(run)

        def emit(name: str, figures: dict[str, Any], run: dict[str, dict[str, Any]] = run,
                 repeat: int = repeat) -> None:
            run[name] = figures
            db = "postgresql" if args.db or name.startswith("baseline") else "sqlite"
            print(json.dumps({"bench": "http_flash_sale", "scenario": name, "repeat": repeat, **figures,
                              "duration_s": args.duration, "db": db, "gateway_workers": args.workers,
                              "cpus": os.cpu_count()}), flush=True)

        if set(wanted) & set(SHOP_SCENARIOS):
            shop_scenarios(args, [name for name in wanted if name in SHOP_SCENARIOS], emit)
        if "baseline" in wanted:
            baseline(args, emit)
    print(json.dumps(summary(runs, args)), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:  # everything started has been stopped on the way out
        print(f"http_flash_sale: interrupted ({str(stop) or 'Ctrl-C'})", file=sys.stderr)
        sys.exit(130)
