"""A burst of checkouts against a payment server that answers 429 above Stripe's live rate (100/s).

Starts the shop the way `cartwheel up` does, with the embedded payment server set to answer 429
above ``--server-rate`` requests a second (Stripe's live limit by default), makes ``--products``
products with enough stock, then sends ``--checkouts`` buy-now ``POST /api/checkout`` at once
(``--concurrency`` in flight) and waits until every order has its PaymentIntent. Two scenarios,
each on a fresh shop:

- ``paced``: the payments service's limiter at ``--limiter-rate`` (100/s): what this project does.
- ``unpaced``: the limiter out of the way (10,000/s, the most the setting takes): every checkout
  asks Stripe at once, and only the handling of Stripe's 429 (hold every call, queue the intent)
  keeps the buyers.
- ``before``: the shop as it was before it had a limiter, run from a checkout of that commit
  against a payment server started apart (``--external``), since that shop has no 429 rehearsal:
  ``PYTHONPATH=<old checkout> python bench/stripe_rate.py --scenario before --external URL``.
  Its failed checkouts are the buyers a flash sale lost.

For each: checkouts answered 201 (awaiting payment at once, or reserved with the intent queued),
failed ones by status and code, checkout latency, the time from the first request until the last
order had its intent, the 429s the server sent (its ``/_config/stats``), and a check that none is
lost: every placed order has exactly one intent, all distinct. One JSON line per scenario.
Not part of the test run.

    python bench/stripe_rate.py                         # 1,000 checkouts, both scenarios
    python bench/stripe_rate.py --scenario paced --checkouts 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import requests
from _load import ONE_ADDRESS_IS_MANY_CLIENTS, percentile
from cart import make_products

from cartwheel.natsserver import free_port
from cartwheel.settings import Settings
from cartwheel.supervisor import System

SCENARIOS = {"paced": None, "unpaced": 10_000.0, "before": None}  # the limiter's rate: the bench's, or out of the way
DONE_WITHIN_S = 120.0  # every intent must exist by then


async def burst(base_url: str, products: list[dict[str, Any]], checkouts: int,
                concurrency: int) -> tuple[list[dict[str, Any]], Counter[str], list[float], float]:
    """Send the checkouts; the placed orders, failures by ``status code``, latencies (ms), the start time."""
    placed: list[dict[str, Any]] = []
    failed: Counter[str] = Counter()
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def one(i: int) -> None:
            body = {"items": [{"product_id": products[i % len(products)]["id"], "quantity": 1}]}
            async with slots:
                began = time.perf_counter()
                try:
                    async with http.post(f"{base_url}/api/checkout", json=body) as answer:
                        reply = await answer.json(content_type=None)
                        if answer.status == 201:
                            placed.append(reply)
                            latencies.append((time.perf_counter() - began) * 1000)
                        else:
                            failed[f"{answer.status} {(reply.get('error') or {}).get('code')}"] += 1
                except (aiohttp.ClientError, TimeoutError) as error:
                    failed[type(error).__name__] += 1

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(checkouts)))
    return placed, failed, latencies, started


def intents_of(base_url: str, token: str, order_ids: list[str], started: float) -> tuple[dict[str, str], float]:
    """Wait until every order has its intent (or DONE_WITHIN_S passes): order → intent, and the seconds from
    ``started`` (wall clock) until the last one was made (the order's move to awaiting payment, as it records)."""
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {token}"
    intents: dict[str, str] = {}
    last = started
    waiting = list(order_ids)
    deadline = time.time() + DONE_WITHIN_S
    while waiting and time.time() < deadline:
        still = []
        for order_id in waiting:
            order = admin.get(f"{base_url}/api/orders/{order_id}", timeout=30).json()
            if order["payment"].get("client_secret") and order["payment"].get("payment_intent_id"):
                intents[order_id] = order["payment"]["payment_intent_id"]
                made = max(datetime.fromisoformat(step["at"]).timestamp() for step in order["history"]
                           if step["status"] == "awaiting_payment")
                last = max(last, made)
            else:
                still.append(order_id)
        waiting = still
        if waiting:
            time.sleep(0.2)
    return intents, last - started


def server_stats(shop: System) -> dict[str, Any]:
    return requests.get(f"{shop.settings.stripe_api_base}/_config/stats", timeout=10).json()


def shop_settings(name: str, args: argparse.Namespace, var_dir: Path) -> Settings:
    """This shop's settings; ``before``: only those the shop had then, its payment server the one given."""
    common: dict[str, Any] = {
        "var_dir": var_dir, "nats_url": f"nats://127.0.0.1:{free_port()}", "gateway_port": free_port(),
        **ONE_ADDRESS_IS_MANY_CLIENTS, "gateway_workers": args.workers, "metrics_port": 0, "log_level": "WARNING",
        "request_timeout": 30.0}
    if args.external:
        common |= {"stripe_secret_key": "sk_test_bench", "stripe_api_base": args.external,
                   "stripe_webhook_secret": "whsec_bench"}
    if name == "before":
        return Settings(**common)
    rehearsal = {} if args.external else {"payment_server_rate_limit": args.server_rate}
    return Settings(**common, stripe_requests_per_second=SCENARIOS[name] or args.limiter_rate, **rehearsal)


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    limiter = None if name == "before" else SCENARIOS[name] or args.limiter_rate
    var_dir = Path(tempfile.mkdtemp(prefix="cw-stripe-rate-"))
    settings = shop_settings(name, args, var_dir)
    try:
        with (var_dir / "system.log").open("w") as log, System(settings, out=log, colour=False, seed=False) as shop:
            products = make_products(shop.base_url, shop.admin_token, args.products,
                                     stock=args.checkouts // args.products + 1, sku_prefix=f"RATE-{name}")
            before = server_stats(shop)
            started_wall = time.time()
            placed, failed, latencies, started = asyncio.run(
                burst(shop.base_url, products, args.checkouts, args.concurrency))
            answered_s = time.monotonic() - started
            ids = [order["order_id"] for order in placed]
            intents, last_intent_s = intents_of(shop.base_url, shop.admin_token, ids, started_wall)
            after = server_stats(shop)
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)
    queued = sum(order["status"] == "reserved" for order in placed)
    return {
        "bench": "stripe_rate", "scenario": name, "checkouts": args.checkouts, "concurrency": args.concurrency,
        "limiter_per_s": limiter, "server_429_above_per_s": args.server_rate,
        "placed": len(placed), "failed": sum(failed.values()), "failed_by": dict(failed),
        "placed_with_intent_at_once": len(placed) - queued, "placed_queued": queued,
        "orders_with_intent": len(intents), "distinct_intents": len(set(intents.values())),
        "lost": len(placed) - len(intents),
        "all_answered_s": round(answered_s, 2),
        "last_intent_s": round(last_intent_s, 2) if len(intents) == len(placed) else None,
        "checkout_p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "checkout_p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "server_429s": after.get("rate_limited", 0) - before.get("rate_limited", 0),
        "server_requests": after.get("requests", 0) - before.get("requests", 0),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkouts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=250, help="checkouts in flight")
    parser.add_argument("--products", type=int, default=20)
    parser.add_argument("--limiter-rate", type=float, default=100.0, help="the payments limiter (paced scenario)")
    parser.add_argument("--server-rate", type=float, default=100.0, help="the payment server answers 429 above")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--scenario", action="append", choices=tuple(SCENARIOS), help="only these (repeatable)")
    parser.add_argument("--external", help="a payment server started apart (its API base URL), answering 429 "
                        "above --server-rate already; needed by the 'before' scenario")
    args = parser.parse_args()
    for name in SCENARIOS:
        if (args.scenario and name in args.scenario) or (not args.scenario and name != "before"):
            print(json.dumps(run(name, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
