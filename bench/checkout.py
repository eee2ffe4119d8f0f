"""Checkouts end to end: HTTP → gateway → orders → inventory lanes → payments → the embedded payment server.

Starts the shop the way `cartwheel up` does (free ports, a temporary var dir, localstripe as the
payment server), creates 100 products with plenty of stock, then measures, at 50 buyers in
flight, each buying one unit of the next product:

- ``http_checkout``: ``POST /api/checkout`` (buy-now ``items``; reserve, PaymentIntent) then
  ``POST /api/orders/{id}/pay`` with ``pm_card_visa`` (confirmation at the payment server); one
  attempt is both requests, and counts when the order is paid or the pay reply says the payment
  succeeded. At the end, every order the scenario made is read back: how many reached ``paid``,
  and how many units inventory still holds reserved (should be none once paid orders commit).
- ``saga_checkout``: the same checkout asked of the orders service over NATS, with the payments
  service stopped and a stand-in in this process answering its requests at once: the saga's own
  cost (catalog look-ups, reservations in the inventory lanes, the order's transitions).

Prints one JSON line per scenario and a summary line. Not part of the test run.

    python bench/checkout.py                      # both scenarios, 10 s each
    python bench/checkout.py --duration 5 --scenario saga_checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import requests
from _load import ONE_ADDRESS_IS_MANY_CLIENTS, CpuMeter, percentile
from cart import make_products, roles

from cartwheel import natsauth, subjects
from cartwheel.bus import encode, request
from cartwheel.contracts.orders import Checkout, CheckoutItem
from cartwheel.natsserver import free_port
from cartwheel.settings import Settings
from cartwheel.supervisor import System

SCENARIOS = ("http_checkout", "saga_checkout")


def figures(latencies: list[float], ok: int, failed: int, elapsed: float, first_error: str | None) -> dict[str, Any]:
    return {
        "checkouts_per_s": round(ok / elapsed, 1) if elapsed else 0,
        "p50_ms": round(percentile(latencies, 50), 2) if latencies else None,
        "p95_ms": round(percentile(latencies, 95), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "ok": ok,
        "failed": failed,
        "first_error": first_error,
        "elapsed_s": round(elapsed, 2),
    }


def http_checkout(shop: System, products: list[dict[str, Any]], concurrency: int, duration: float) -> dict[str, Any]:
    stop_at = time.monotonic() + duration
    lock = threading.Lock()
    latencies: list[float] = []
    orders: list[str] = []
    counter = iter(range(10**9))
    failures: list[str] = []

    def buyer(_: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter)
                product = products[i % len(products)]
                began = time.perf_counter()
                try:
                    placed = session.post(f"{shop.base_url}/api/checkout", timeout=30,
                                          json={"items": [{"product_id": product["id"], "quantity": 1}]})
                    if placed.status_code != 201:
                        raise RuntimeError(f"checkout {placed.status_code}: {placed.text[:200]}")
                    order_id = placed.json()["order_id"]
                    paid = session.post(f"{shop.base_url}/api/orders/{order_id}/pay", timeout=30,
                                        json={"payment_method": "pm_card_visa"})
                    if paid.status_code != 200 or paid.json()["payment"].get("status") != "succeeded":
                        raise RuntimeError(f"pay {paid.status_code}: {paid.text[:200]}")
                except Exception as error:  # counted, and the first one shown
                    with lock:
                        failures.append(str(error))
                    continue
                with lock:
                    latencies.append((time.perf_counter() - began) * 1000)
                    orders.append(order_id)

    meter = CpuMeter(roles(shop))
    meter.start()
    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(buyer, range(concurrency)))
    elapsed = time.monotonic() - began
    cpu = meter.stop()
    result = figures(latencies, len(orders), len(failures), elapsed, failures[0] if failures else None)
    result["cpu_cores"] = cpu
    result |= settle(shop, orders, products)
    return result


def settle(shop: System, orders: list[str], products: list[dict[str, Any]]) -> dict[str, Any]:
    """Wait until the scenario's orders stop moving; how many are paid, and what stock is still reserved."""
    admin = {"Authorization": f"Bearer {shop.admin_token}"}
    deadline = time.monotonic() + 60
    statuses: dict[str, str] = {}
    with requests.Session() as session:
        while time.monotonic() < deadline:
            statuses = {o: session.get(f"{shop.base_url}/api/orders/{o}", headers=admin, timeout=30).json()["status"]
                        for o in orders[-200:]}  # the newest are the last to settle
            if all(s == "paid" for s in statuses.values()):
                break
            time.sleep(0.5)
        reserved = sum(session.get(f"{shop.base_url}/api/admin/inventory/{p['id']}", headers=admin,
                                   timeout=30).json()["reserved"] for p in products)
    return {"paid_of_last_200": sum(s == "paid" for s in statuses.values()), "units_still_reserved": reserved}


async def saga_checkout(shop: System, products: list[dict[str, Any]], concurrency: int,
                        duration: float) -> dict[str, Any]:
    nc = await nats.connect(shop.nats_url, **natsauth.connect_options(shop.settings, natsauth.ADMIN))

    async def instant_payments(msg: Any) -> None:
        body = json.loads(msg.data)
        await msg.respond(encode({"ok": True, "data": {
            "payment_intent_id": f"pi_{body['order_id']}", "client_secret": f"pi_{body['order_id']}_secret",
            "status": "requires_payment_method", "amount_cents": body["amount_cents"], "currency": body["currency"]}}))

    stand_in = await nc.subscribe(subjects.PAYMENTS_INTENT_CREATE, queue="payments", cb=instant_payments)
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(10**9))
    stop_at = time.monotonic() + duration

    async def buyer() -> None:
        while time.monotonic() < stop_at:
            product = products[next(counter) % len(products)]
            began = time.perf_counter()
            try:
                await request(nc, Checkout(items=[CheckoutItem(product_id=product["id"], quantity=1)]), 30)
            except Exception as error:
                failures.append(str(error))
                continue
            latencies.append((time.perf_counter() - began) * 1000)

    meter = CpuMeter(roles(shop))
    meter.start()
    began = time.monotonic()
    await asyncio.gather(*(buyer() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    cpu = meter.stop()
    await stand_in.unsubscribe()
    await nc.close()
    result = figures(latencies, len(latencies), len(failures), elapsed, failures[0] if failures else None)
    result["cpu_cores"] = cpu
    return result


def stop_payments(shop: System) -> None:
    child = shop.children.all["payments"]
    child.process.terminate()
    child.process.wait(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--concurrency", type=int, default=50, help="buyers in flight")
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    args = parser.parse_args()

    var_dir = Path(tempfile.mkdtemp(prefix="cw-checkout-bench-"))
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", gateway_port=free_port(),
                        **ONE_ADDRESS_IS_MANY_CLIENTS,
                        gateway_workers=args.workers, metrics_port=0, log_level="WARNING")
    results: dict[str, dict[str, Any]] = {}
    with (var_dir / "system.log").open("w") as log, System(settings, out=log, colour=False, seed=False) as shop:
        products = make_products(shop.base_url, shop.admin_token, args.products)
        for name in SCENARIOS:
            if args.scenario and name not in args.scenario:
                continue
            if name == "http_checkout":
                measured = http_checkout(shop, products, args.concurrency, args.duration)
            else:
                stop_payments(shop)  # its requests go to the stand-in from now on
                measured = asyncio.run(saga_checkout(shop, products, args.concurrency, args.duration))
            results[name] = measured
            print(json.dumps({"bench": "checkout", "scenario": name, **measured, "concurrency": args.concurrency,
                              "duration_s": args.duration, "products": args.products,
                              "gateway_workers": args.workers, "cpus": os.cpu_count()}), flush=True)
    shutil.rmtree(var_dir, ignore_errors=True)
    summary: dict[str, Any] = {"bench": "checkout", "summary": True}
    for name, measured in results.items():
        summary[f"{name}_per_s"] = measured["checkouts_per_s"]
        summary[f"{name}_p99_ms"] = measured["p99_ms"]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
