"""The cart under load: add-to-cart and get-cart through the gateway, the cart service and the cart lane.

Starts the shop the way `cartwheel up` does (on free ports, in a temporary var dir), creates
products with plenty of stock, opens 1,000 carts over HTTP (one add each, keeping each cart's
signed cookie), then measures, 10 s each, at 100 in flight over those carts:

- ``http_add_to_cart`` / ``http_get_cart``: wrk (Debian package `wrk`) through the gateway, each
  request on the next cart's cookie and the next product: gateway → NATS → cart service
  (→ catalog, inventory) → cart lane;
- ``service_add_to_cart`` / ``service_get_cart``: an in-process asyncio client asking the cart
  service over NATS, the same messages the gateway sends: the gateway's cost is the difference;
- ``lane_add``: an in-process client calling the cart lane directly with the ``add`` command the
  service builds (product snapshot and availability already known): the lane's own cost;
- ``catalog_get_product`` / ``inventory_get_stock``: the two look-ups the cart service makes for
  each add, asked directly over NATS.

Prints one JSON line per scenario, then a summary line with the targets (≥ 2,000 add-to-cart/s
through HTTP, p99 ≤ 50 ms) and whether each is met. ``cpu_cores`` is CPU seconds per wall
second of each process (gateway = gunicorn master and workers) during the scenario. Not part of
the test run.

    python bench/cart.py                                   # all scenarios, 10 s each
    python bench/cart.py --duration 5 --scenario http_add_to_cart --scenario lane_add
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import requests
from _load import ONE_ADDRESS_IS_MANY_CLIENTS, CpuMeter, percentile
from _wrk import run_wrk
from itsdangerous import URLSafeSerializer

from cartwheel import bus, natsauth
from cartwheel.contracts.cart import CART_LANE, AddItem, AddToCart, GetCart, ProductSnapshot
from cartwheel.contracts.catalog import GetProduct
from cartwheel.contracts.inventory import GetStock
from cartwheel.lanes.client import LaneClient
from cartwheel.natsserver import free_port
from cartwheel.settings import SERVICES, Settings
from cartwheel.supervisor import GATEWAY, NATS, System

TARGET_ADDS_PER_S = 2000
TARGET_P99_MS = 50.0
STOCK = 1_000_000
SCENARIOS = (
    "http_add_to_cart",
    "http_get_cart",
    "service_add_to_cart",
    "service_get_cart",
    "lane_add",
    "catalog_get_product",
    "inventory_get_stock",
)

# Request i of a wrk thread uses cart i and product i // #carts (both round-robin), so a cart's
# line for one product grows by 1 only every #carts x #products requests, far under 999 a line.
LUA = """
local cookies = {%(cookies)s}
local products = {%(products)s}
local method = "%(method)s"
local headers = {["Content-Type"] = "application/json"}
local threads = 0
i = 0
setup = function(thread)  -- threads start at different carts
  thread:set("i", threads * %(offset)d)
  threads = threads + 1
end
request = function()
  i = i + 1
  local c = (i %% #cookies) + 1
  local p = (math.floor(i / #cookies) %% #products) + 1
  headers["Cookie"] = "cart=" .. cookies[c]
  local body = nil
  if method == "POST" then body = '{"product_id": "' .. products[p] .. '", "quantity": 1}' end
  return wrk.format(method, "%(path)s", headers, body)
end
"""


# ---------------------------------------------------------------- processes and their CPU


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (gunicorn's master and its workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def roles(shop: System) -> dict[str, list[int]]:
    out = {}
    for name in (NATS, GATEWAY, *SERVICES):
        child = shop.children.all.get(name)
        if child is not None and child.alive:
            out[name] = descendants(child.process.pid)
    return out


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- setup over HTTP


def make_products(base_url: str, token: str, count: int, *, stock: int = STOCK,
                  sku_prefix: str = "CARTBENCH") -> list[dict[str, Any]]:
    """``count`` products with ``stock`` units each; returns once inventory shows that stock available."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    made = []
    stamp = int(time.time())
    for i in range(count):
        body = {"sku": f"{sku_prefix}-{stamp}-{i}", "name": f"Cart bench product {i}", "price_cents": 1000 + i,
                "currency": "EUR", "description": "made by bench/cart.py", "stock": stock}
        resp = session.post(f"{base_url}/api/admin/products", json=body, timeout=10)
        resp.raise_for_status()
        made.append(resp.json())
    deadline = time.monotonic() + 60
    for p in made:  # inventory makes the stock row from the catalog's event: wait until it has
        while True:
            resp = session.get(f"{base_url}/api/products/{p['id']}", timeout=10)
            resp.raise_for_status()
            if resp.json().get("available") == stock:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"product {p['id']}: stock not available after 60 s: {resp.json()}")
            time.sleep(0.1)
    return made


def open_carts(base_url: str, products: list[dict[str, Any]], count: int) -> list[str]:
    """``count`` carts, one add each; their cookie values."""

    def one(i: int) -> str:
        with requests.Session() as session:
            resp = session.post(f"{base_url}/api/cart/items",
                                json={"product_id": products[i % len(products)]["id"], "quantity": 1}, timeout=10)
            resp.raise_for_status()
            return resp.cookies["cart"]

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


def cart_id(cookie: str) -> str:
    """The cart id inside a signed cookie (read without checking the signature: the gateway made it)."""
    _, payload = URLSafeSerializer("unused").loads_unsafe(cookie)
    return str(payload)


# ---------------------------------------------------------------- through HTTP with wrk


def http_scenario(base_url: str, scenario: str, cookies: list[str], products: list[dict[str, Any]],
            args: argparse.Namespace, shop: System, duration: int) -> dict[str, Any]:
    method, path = ("POST", "/api/cart/items") if scenario == "http_add_to_cart" else ("GET", "/api/cart")
    script = LUA % {
        "cookies": ", ".join(json.dumps(c) for c in cookies),
        "products": ", ".join(json.dumps(p["id"]) for p in products),
        "method": method,
        "path": path,
        "offset": 7919,
    }
    meter = CpuMeter(roles(shop))
    wrk_cpu = children_cpu_s()
    meter.start()
    began = time.monotonic()
    r = run_wrk(base_url, script, threads=args.threads, connections=args.concurrency, duration=duration)
    cpu = meter.stop()
    cpu["wrk"] = round((children_cpu_s() - wrk_cpu) / (time.monotonic() - began), 2)
    del cpu["client"]  # this process only waits for wrk
    return {
        "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6)),
        "p50_ms": round(r["p50_us"] / 1000, 2),
        "p95_ms": round(r["p95_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
        "max_ms": round(r["max_us"] / 1000, 2),
        "requests": r["requests"],
        "non_2xx": r["non_2xx"],
        "errors": r["socket_errors"],
        "load_generator": f"wrk -t{args.threads}",
        "cpu_cores": cpu,
    }


# ---------------------------------------------------------------- in process over NATS


class Timed:
    """Closed loop for a fixed time: C workers each send their next request until the time is up.

    Workers stop by themselves rather than being cancelled: under Python 3.11 a cancellation that
    races a reply inside nats-py's ``wait_for`` can be swallowed, and such a worker never stops.
    """

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.first_error: str | None = None
        self.elapsed_s = 0.0

    async def run(self, attempt: Any, concurrency: int, duration_s: float) -> Timed:
        clock = time.monotonic
        start = clock()
        end = start + duration_s
        counter = iter(range(10**12))

        async def worker() -> None:
            while clock() < end:
                i = next(counter)
                began = clock()
                try:
                    await attempt(i)
                except Exception as exc:  # a benchmark counts failures, it does not stop on them
                    self.errors += 1
                    self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
                    continue
                self.latencies_ms.append((clock() - began) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        self.elapsed_s = clock() - start
        return self


async def run_async(scenario: str, cart_ids: list[str], products: list[dict[str, Any]],
                    args: argparse.Namespace, shop: System, duration: int) -> dict[str, Any]:
    tenant = shop.settings.tenant
    timeout = shop.settings.request_timeout
    carts, count = len(cart_ids), len(products)
    snapshots = [ProductSnapshot(product_id=p["id"], sku=p["sku"], name=p["name"], unit_price_cents=p["price_cents"],
                                 currency=p["currency"], active=p.get("active", True)) for p in products]
    nc = await nats.connect(shop.nats_url, **natsauth.connect_options(shop.settings, natsauth.ADMIN))
    lane = await LaneClient(nc, CART_LANE).start()
    try:
        async def service_add(i: int) -> bool:
            msg = AddToCart(tenant=tenant, cart_id=cart_ids[i % carts],
                            product_id=products[(i // carts) % count]["id"], quantity=1)
            await bus.request(nc, msg, timeout)
            return True

        async def service_get(i: int) -> bool:
            await bus.request(nc, GetCart(tenant=tenant, cart_id=cart_ids[i % carts]), timeout)
            return True

        async def lane_add(i: int) -> bool:
            cmd = AddItem(tenant=tenant, cart_id=cart_ids[i % carts], product=snapshots[(i // carts) % count],
                          quantity=1, available=STOCK)
            await lane.call(cmd.cart_id, cmd.kind, cmd.model_dump(mode="json"), command_id=cmd.id, timeout=timeout)
            return True

        async def get_product(i: int) -> bool:  # the first of the two look-ups an add makes
            await bus.request(nc, GetProduct(tenant=tenant, id_or_sku=products[i % count]["id"]), timeout)
            return True

        async def get_stock(i: int) -> bool:  # the second
            await bus.request(nc, GetStock(tenant=tenant, product_id=products[i % count]["id"]), timeout)
            return True

        attempt = {
            "service_add_to_cart": service_add,
            "service_get_cart": service_get,
            "lane_add": lane_add,
            "catalog_get_product": get_product,
            "inventory_get_stock": get_stock,
        }[scenario]
        # Requests are numbered from a point no earlier scenario reached, so no line nears 999 units.
        offset = 10_000_000 * (SCENARIOS.index(scenario) + 1)

        async def numbered(i: int) -> bool:
            return await attempt(offset + i)

        meter = CpuMeter(roles(shop))
        meter.start()
        run = await Timed().run(numbered, args.concurrency, duration)
        cpu = meter.stop()
    finally:
        await lane.close()
        await nc.drain()
    answered = len(run.latencies_ms)
    return {
        "requests_per_s": round(answered / run.elapsed_s) if run.elapsed_s else 0,
        "p50_ms": percentile(run.latencies_ms, 50),
        "p95_ms": percentile(run.latencies_ms, 95),
        "p99_ms": percentile(run.latencies_ms, 99),
        "max_ms": round(max(run.latencies_ms), 2) if run.latencies_ms else None,
        "requests": answered,
        "non_2xx": None,
        "errors": run.errors,
        "first_error": run.first_error,
        "load_generator": "asyncio (this process)",
        "cpu_cores": cpu,
    }


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each scenario")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight (wrk connections)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--carts", type=int, default=1000)
    parser.add_argument("--products", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench/cart.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2

    var_dir = Path(tempfile.mkdtemp(prefix="cw-cart-bench-"))
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", gateway_port=free_port(),
                        **ONE_ADDRESS_IS_MANY_CLIENTS,
                        gateway_workers=args.workers, metrics_port=0, log_level="WARNING")
    results: dict[str, dict[str, Any]] = {}
    with (var_dir / "system.log").open("w") as log, System(settings, out=log, colour=False, seed=False) as shop:
        products = make_products(shop.base_url, shop.admin_token, args.products)
        cookies = open_carts(shop.base_url, products, args.carts)
        cart_ids = [cart_id(c) for c in cookies]
        for name in SCENARIOS:
            if args.scenario and name not in args.scenario:
                continue
            if name.startswith("http_"):
                if args.warmup:
                    http_scenario(shop.base_url, name, cookies, products, args, shop, args.warmup)
                figures = http_scenario(shop.base_url, name, cookies, products, args, shop, args.duration)
            else:
                if args.warmup:
                    asyncio.run(run_async(name, cart_ids, products, args, shop, args.warmup))
                figures = asyncio.run(run_async(name, cart_ids, products, args, shop, args.duration))
            results[name] = figures
            print(json.dumps({
                "bench": "cart",
                "scenario": name,
                **figures,
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "carts": args.carts,
                "products": args.products,
                "gateway_workers": args.workers,
                "cpus": os.cpu_count(),
            }), flush=True)
    shutil.rmtree(var_dir, ignore_errors=True)

    http_add = results.get("http_add_to_cart")
    summary: dict[str, Any] = {"bench": "cart", "summary": True,
                               "target_adds_per_s": TARGET_ADDS_PER_S, "target_p99_ms": TARGET_P99_MS}
    if http_add:
        summary |= {
            "http_adds_per_s": http_add["requests_per_s"],
            "http_add_p99_ms": http_add["p99_ms"],
            "http_add_non_2xx": http_add["non_2xx"],
            "http_add_socket_errors": http_add["errors"],  # wrk's timeouts (2 s) among them
            "throughput_met": http_add["requests_per_s"] >= TARGET_ADDS_PER_S
            and http_add["non_2xx"] == 0
            and http_add["errors"] == 0,
            "p99_met": http_add["p99_ms"] <= TARGET_P99_MS,
        }
    for name in ("service_add_to_cart", "lane_add"):
        if http_add and name in results and results[name]["requests_per_s"]:
            # mean time per request at this concurrency (Little's law); the difference is the layer above
            summary[f"http_vs_{name}_ms_per_request"] = round(
                1000 * args.concurrency * (1 / http_add["requests_per_s"] - 1 / results[name]["requests_per_s"]), 2)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
