"""Catalog through the whole stack over HTTP: gateway (gunicorn gevent) → NATS → catalog → SQL / KV.

Starts the shop the way `cartwheel up` does (on free ports, in a temporary var dir), creates
products, then drives each scenario with wrk (Debian package `wrk`) and prints one JSON line per
scenario. Not part of the test run.

    python bench/catalog_http.py                     # all scenarios, 10 s each, 64 connections
    python bench/catalog_http.py --duration 5 --connections 128 --scenario product_by_id
    python bench/catalog_http.py --catalog-db postgresql+psycopg://postgres@127.0.0.1:5432/cw_bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from _load import ONE_ADDRESS_IS_MANY_CLIENTS
from _wrk import run_wrk

from cartwheel.natsserver import free_port
from cartwheel.settings import Settings
from cartwheel.supervisor import System

LUA = """
local paths = {%(paths)s}
local method = "%(method)s"
local patch = %(patch)s
local headers = {["Authorization"] = "Bearer %(token)s", ["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = i + 1
  local body = nil
  if patch then body = '{"price_cents": ' .. (1000 + i %% 9000) .. '}' end
  return wrk.format(method, paths[(i %% #paths) + 1], headers, body)
end
"""


def scenarios(products: list[dict[str, Any]]) -> dict[str, tuple[str, list[str], bool]]:
    ids = [f"/api/products/{p['id']}" for p in products]
    return {
        "healthz": ("GET", ["/healthz"], False),
        "product_by_id": ("GET", ids, False),  # the KV cache answers; no SQL
        "product_by_sku": ("GET", [f"/api/products/{p['sku']}" for p in products], False),  # catalog + SQL
        "list_page": ("GET", ["/api/products?limit=20"], False),  # catalog + SQL, 20 rows
        "admin_update": ("PATCH", [f"/api/admin/products/{p['id']}" for p in products], True),  # SQL + outbox + KV
    }


def wrk_scenario(base_url: str, token: str, method: str, paths: list[str], patch: bool,
                 args: argparse.Namespace) -> dict:
    script = LUA % {
        "paths": ", ".join(json.dumps(p) for p in paths),
        "method": method,
        "patch": "true" if patch else "false",
        "token": token,
    }
    return run_wrk(base_url, script, threads=args.threads, connections=args.connections, duration=args.duration)


def make_products(base_url: str, token: str, count: int) -> list[dict[str, Any]]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    made = []
    stamp = int(time.time())
    for i in range(count):
        body = {"sku": f"BENCH-{stamp}-{i}", "name": f"Bench product {i}", "price_cents": 1000 + i, "currency": "EUR",
                "description": "made by bench/catalog_http.py"}
        resp = session.post(f"{base_url}/api/admin/products", json=body, timeout=10)
        resp.raise_for_status()
        made.append(resp.json())
    for p in made:  # fill the cache
        session.get(f"{base_url}/api/products/{p['id']}", timeout=10).raise_for_status()
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--catalog-db", default=None, help="catalog database URL (default: SQLite in a temp dir)")
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench/catalog_http.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2

    var_dir = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", gateway_port=free_port(),
                        **ONE_ADDRESS_IS_MANY_CLIENTS,
                        gateway_workers=args.workers, metrics_port=0, catalog_database_url=args.catalog_db,
                        log_level="WARNING")
    with (var_dir / "system.log").open("w") as log, System(settings, out=log, colour=False, seed=False) as shop:
        products = make_products(shop.base_url, shop.admin_token, args.products)
        for name, (method, paths, patch) in scenarios(products).items():
            if args.scenario and name not in args.scenario:
                continue
            r = wrk_scenario(shop.base_url, shop.admin_token, method, paths, patch, args)
            print(json.dumps({
                "bench": "catalog_http",
                "scenario": name,
                "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6)),
                "p50_ms": round(r["p50_us"] / 1000, 1),
                "p90_ms": round(r["p90_us"] / 1000, 1),
                "p99_ms": round(r["p99_us"] / 1000, 1),
                "max_ms": round(r["max_us"] / 1000, 1),
                "requests": r["requests"],
                "non_2xx": r["non_2xx"],
                "socket_errors": r["socket_errors"],
                "connections": args.connections,
                "duration_s": args.duration,
                "gateway_workers": args.workers,
                "catalog_db": "postgresql" if args.catalog_db else "sqlite",
                "cpus": os.cpu_count(),
            }), flush=True)
    shutil.rmtree(var_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
