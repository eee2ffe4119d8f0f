"""An idle shop with thousands of past orders, after a restart: what it costs (issue 12).

Starts the shop the way `cartwheel up` does (a temporary var dir, SQLite per service, the embedded
payment server keeping its state in the var dir), places buy-now checkouts through HTTP for
``--place`` s (wrk, 200 connections, each with its own Idempotency-Key), stops the shop while its
orders still await payment, starts it again on the same var dir, waits until every order has
expired (reservation TTL ``--ttl`` s) and the sweeper has nothing left to do, then measures the CPU
of every process for ``--idle`` s, ``--samples`` times in a row (3: the figure is their median).
``--forget-payment-server`` deletes the payment server's state before the restart: what every
restart did before issue 12 (the sweeper then asked, once a second and for ever, to cancel
intents the payment server no longer had).

JSON lines: ``placed`` (orders, checkouts/s), ``restarted`` (seconds until no order awaits payment),
``idle`` (how many orders are ``expired`` and ``needs_review``, CPU cores per process role in each
sample, ``shop``: their sum, the median over the samples, and the target: that median < 0.05 cores,
5 % of one core) and, with ``--again-after``,
``idle_again``, measured that many seconds later. Not part of the test run; needs wrk.

    python bench/idle_restart.py                          # ~12,000 orders on this machine, ~16 min
    python bench/idle_restart.py --forget-payment-server --again-after 600  # and once the sweeper gave up
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from _load import CpuMeter
from http_flash_sale import Cpu, checkout_load, fresh_product, shop_roles

from cartwheel.natsserver import free_port
from cartwheel.settings import SERVICES, Settings
from cartwheel.supervisor import System

SHOP_ROLES = ("nats-server", "gateway", *SERVICES, "localstripe")


@contextlib.contextmanager
def shop(var_dir: Path, ttl: int) -> Iterator[System]:
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", gateway_port=free_port(),
                        gateway_workers=2, metrics_port=0, log_level="WARNING", reservation_ttl_seconds=ttl)
    with (var_dir / "system.log").open("a") as log, System(settings, out=log, colour=False, seed=False) as running:
        yield running


def count(system: System, status: str, limit: int = 200) -> int:
    """How many orders are in ``status`` (paging through the admin listing)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {system.admin_token}"
    total, cursor = 0, ""
    while True:
        page = session.get(f"{system.base_url}/api/admin/orders", timeout=30,
                           params={"status": status, "limit": limit, "cursor": cursor}).json()
        total += len(page["items"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--place", type=int, default=45, help="seconds of checkouts before the restart")
    parser.add_argument("--ttl", type=int, default=90, help="reservation TTL: orders expire this long after placing")
    parser.add_argument("--idle", type=int, default=30, help="seconds of idle CPU measured")
    parser.add_argument("--samples", type=int, default=3, help="idle measurements in a row; the figure is the median")
    parser.add_argument("--settle", type=int, default=15, help="seconds waited after the last expiry")
    parser.add_argument("--forget-payment-server", action="store_true", help="restart the payment server empty")
    parser.add_argument("--again-after", type=int, default=0,
                        help="measure idle once more this many seconds later (the sweeper done giving up)")
    args = parser.parse_args()
    args.warmup, args.duration, args.threads, args.wrk_timeout = 0, args.place, 2, 30
    var_dir = Path(tempfile.mkdtemp(prefix="cw-idle-"))
    try:
        with shop(var_dir, args.ttl) as first:
            product = fresh_product(first, 10_000_000, "idle")
            began = time.monotonic()
            figures = checkout_load(first.base_url, product, Cpu(shop_roles(first), postgres=False), args, 200, None)
            placed = figures["status_201"]
            print(json.dumps({"bench": "idle_restart", "step": "placed", "orders": placed,
                              "checkouts_per_s": figures["checkouts_per_s"], "status_5xx": figures["status_5xx"]}),
                  flush=True)
        if args.forget_payment_server:
            shutil.rmtree(var_dir / "localstripe", ignore_errors=True)
        with shop(var_dir, args.ttl) as second:
            restarted = time.monotonic()
            while count(second, "awaiting_payment", limit=1) or time.monotonic() - began < args.ttl:
                time.sleep(2)
            caught_up = time.monotonic() - restarted
            time.sleep(args.settle)
            print(json.dumps({"bench": "idle_restart", "step": "restarted", "seconds_until_none_awaits": round(
                caught_up, 1), "payment_server_forgotten": args.forget_payment_server}), flush=True)
            for step, wait in (("idle", 0), ("idle_again", args.again_after)):
                if step == "idle_again" and not wait:
                    break
                time.sleep(wait)
                samples: list[dict[str, Any]] = []
                for _ in range(args.samples):
                    meter = CpuMeter({role: pids for role, pids in shop_roles(second).items() if role in SHOP_ROLES})
                    meter.start()
                    time.sleep(args.idle)
                    cpu: dict[str, Any] = meter.stop(digits=3)
                    samples.append({"cpu_cores": cpu, "shop": round(sum(v for k, v in cpu.items()
                                                                        if k in SHOP_ROLES and v), 3)})
                shop_cores = statistics.median(sample["shop"] for sample in samples)
                print(json.dumps({"bench": "idle_restart", "step": step, "orders": placed, "seconds": args.idle,
                                  "expired": count(second, "expired"), "needs_review": count(second, "needs_review"),
                                  "samples": samples, "shop": shop_cores,
                                  "target": {"target": "< 0.05", "measured": shop_cores, "met": shop_cores < 0.05}}),
                      flush=True)
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
