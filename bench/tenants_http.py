"""The shopper's HTTP paths with 1,000 tenants registered and 100 of them busy, beside the same shop with one.

Issue 17's target: with 1,000 tenants registered and 100 active, the bench's HTTP paths stay within 20% of the
single-tenant figures. Two shops, started the way `cartwheel up` does (SQLite, one nats-server, the embedded
payment server, ``--workers`` gateway workers), measured in turns, ``--repeat`` rounds (3), medians:

- ``one``: the installation's own tenant only (no registry), at 127.0.0.1;
- ``many``: ``--tenants`` (1,000) registered with ``cartwheel tenants create --file`` (made once, before the
  rounds; its time is printed), of which ``--active`` (100) take the load: each request goes to the next
  tenant's host (the ``Host`` header), with that tenant's products, carts and admin token.

Both shops get the same shape of data, spread the same way: ``--active`` x 5 products to read, ``--active``
products to check out (a stock they cannot sell out), and ``--active`` x 10 carts to add to. Loads (wrk,
``--duration`` s each after ``--warmup`` s):

- ``product_read``: ``GET /api/products/{id}``, 64 connections;
- ``checkout``: buy-now ``POST /api/checkout`` with an Idempotency-Key each, 200 connections;
- ``add_to_cart``: ``POST /api/cart/items`` to the next cart (its cookie), 100 connections.

One JSON line per shop and round (with each process's CPU, in cores, per load, and each service's ``loop``: the
shares of the wall time its event loop's thread ran on a CPU, waited for one, and the two together, ``occupied``;
near 1.0 that loop is where the load queues; and ``gc_full``: each service's full runs of the cyclic collector
during the load, and the milliseconds they stopped it, from its ``cartwheel_gc_pause_seconds``); then a summary:
medians per shop and load, ``many / one`` per figure, and the target (requests/s at least 0.8 of one's, p99 at
most 1.2x) per load.
Not part of the test run.

    python bench/tenants_http.py
    python bench/tenants_http.py --tenants 200 --active 20 --repeat 1 --duration 5
    python bench/tenants_http.py --shops many --loads add_to_cart --repeat 1 --duration 20 --profile cart
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from _load import ONE_ADDRESS_IS_MANY_CLIENTS, CpuMeter, LoopMeter
from _wrk import run_wrk
from cart import roles
from prometheus_client.parser import text_string_to_metric_families

from cartwheel.health import PORTS_FILE
from cartwheel.natsserver import free_port
from cartwheel.settings import SERVICES, Settings
from cartwheel.supervisor import System

ROOT = Path(__file__).resolve().parents[1]
LOADS = {"product_read": 64, "checkout": 200, "add_to_cart": 100}
READS_PER_TENANT, CARTS_PER_TENANT = 5, 10

LUA = """
local entries = {%(entries)s}
local prefix = "%(prefix)s"
local threads = 0
tid = 0
n = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  n = n + 1
  local e = entries[((n * 7919 + tid * 104729) %% #entries) + 1]
  local headers = {["Host"] = e[1], ["Content-Type"] = "application/json"}
  if e[4] ~= "" then headers["Cookie"] = "cart=" .. e[4] end
  if e[2] == "/api/checkout" then headers["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. n end
  return wrk.format(e[5], e[2], headers, e[3])
end
"""


def lua_entry(host: str, path: str, body: str = "", cookie: str = "", method: str = "GET") -> str:
    return "{" + ", ".join(json.dumps(v) for v in (host, path, body, cookie, method)) + "}"


class Target:
    """One tenant as the bench reaches it: its Host header and its admin token."""

    def __init__(self, base_url: str, host: str, token: str) -> None:
        self.base_url, self.host, self.token = base_url, host, token

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A setup call; a 503 (a service still warming up on this busy machine) is tried again, 5 times."""
        headers = {"Host": self.host, **kwargs.pop("headers", {})}
        for attempt in range(6):
            answer = requests.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)
            if answer.status_code != 503 or attempt == 5:
                break
            time.sleep(1 + attempt)
        answer.raise_for_status()
        return answer

    def products(self, count: int, stock: int) -> list[str]:
        made = []
        for i in range(count):
            body = {"sku": f"TB-{secrets.token_hex(4)}-{i}", "name": f"Tenant bench {i}", "price_cents": 1000 + i,
                    "currency": "EUR", "description": "made by bench/tenants_http.py", "stock": stock}
            made.append(self.call("POST", "/api/admin/products", json=body,
                                  headers={"Authorization": f"Bearer {self.token}"}).json()["id"])
        deadline = time.monotonic() + 60
        for product in made:  # inventory makes the stock row from the catalog's event
            while self.call("GET", f"/api/products/{product}").json().get("available") != stock:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.host}: stock of {product} not there after 60 s")
                time.sleep(0.1)
        return made

    def cart(self, product: str) -> str:
        answer = self.call("POST", "/api/cart/items", json={"product_id": product, "quantity": 1})
        return answer.cookies["cart"]


def register(var_dir: Path, tenants: int) -> tuple[dict[str, str], float]:
    """``cartwheel tenants create --file`` for ``tenants`` tenants: their tokens, and the command's seconds."""
    listing = var_dir / "tenants.txt"
    listing.write_text("".join(f"t{i:04d} t{i:04d}.shops.test\n" for i in range(1, tenants + 1)))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CARTWHEEL_")}
    environ |= {"CARTWHEEL_VAR_DIR": str(var_dir), "CARTWHEEL_NATS_URL": "nats://127.0.0.1:1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cartwheel.cli", "tenants", "create", "--file", str(listing)],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"registering the tenants failed:\n{done.stdout}\n{done.stderr}")
    tokens = dict(line.split() for line in listing.with_suffix(".tokens").read_text().splitlines())
    return tokens, seconds


def free_ports(count: int) -> int:
    """The first of ``count`` ports in a row that nobody listens on right now."""
    while True:
        base = free_port()
        try:
            for port in range(base + 1, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


@contextmanager
def shop(var_dir: Path, workers: int) -> Iterator[System]:
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", embedded_nats=True,
                        gateway_host="127.0.0.1", gateway_port=free_port(), gateway_workers=workers,
                        metrics_port=free_ports(1 + len(SERVICES)),  # the gateway's, then each service's
                        **ONE_ADDRESS_IS_MANY_CLIENTS)
    with (var_dir / "system.log").open("a", encoding="utf-8") as log:
        system = System(settings, out=log, colour=False, seed=False)
        system.start()
        try:
            yield system
        finally:
            system.stop()


def scripts(targets: list[Target], active: int) -> dict[str, str]:
    """The three loads' scripts: ``active`` tenants' data, round robin (one target: all of it on that one)."""
    reads, checkouts, carts = [], [], []

    def prepare(i: int) -> tuple[list[str], list[str], list[str]]:
        target = targets[i % len(targets)]
        read = target.products(READS_PER_TENANT, 1_000)
        buy = target.products(1, 10_000_000)[0]
        body = json.dumps({"items": [{"product_id": buy, "quantity": 1}]})
        cookies = [target.cart(read[c % len(read)]) for c in range(CARTS_PER_TENANT)]
        return ([lua_entry(target.host, f"/api/products/{p}") for p in read],
                [lua_entry(target.host, "/api/checkout", body, method="POST")],
                [lua_entry(target.host, "/api/cart/items",
                           json.dumps({"product_id": read[c % len(read)], "quantity": 1}), cookie, "POST")
                 for c, cookie in enumerate(cookies)])

    with ThreadPoolExecutor(8) as pool:
        for r, c, a in pool.map(prepare, range(active)):
            reads += r
            checkouts += c
            carts += a
    prefix = secrets.token_hex(6)
    return {name: LUA % {"entries": ", ".join(entries), "prefix": prefix}
            for name, entries in (("product_read", reads), ("checkout", checkouts), ("add_to_cart", carts))}


@contextmanager
def profiled(system: System, child: str | None, out: Path, gil: bool = False) -> Iterator[None]:
    """py-spy on ``child`` (a service process's name, e.g. ``cart``) while the block runs: its collapsed stacks
    to ``out`` (for flamegraph.pl or a count of the top frames). None: not profiled. ``gil``: only the thread
    holding the GIL (what a process's one core of Python goes to; without it, threads waiting in SQLite count)."""
    if child is None:
        yield
        return
    pid = system.children.all[child].process.pid
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "--rate", "100",
                            "--subprocesses", "--threads", "--format", "raw", "--output", str(out), "--pid", str(pid),
                            *(["--gil"] if gil else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        spy.wait(timeout=60)


def full_collections(system: System, since: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each service's full runs of the cyclic collector (``cartwheel_gc_pause_seconds``, generation 2): how many,
    and the milliseconds its threads stood still, since ``since`` (a reading of this). None: no metrics."""
    ports = json.loads((system.var_dir / PORTS_FILE).read_text(encoding="utf-8"))["metrics"]
    found: dict[str, Any] = {}
    for service in SERVICES:
        try:
            text = requests.get(f"http://127.0.0.1:{ports[service][0]}/metrics", timeout=10).text
        except (KeyError, IndexError, requests.RequestException):
            found[service] = None
            continue
        runs = ms = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "cartwheel_gc_pause_seconds":
                for sample in family.samples:
                    if sample.labels.get("generation") == "2" and sample.name.endswith("_count"):
                        runs = sample.value
                    elif sample.labels.get("generation") == "2" and sample.name.endswith("_sum"):
                        ms = sample.value * 1000
        before = (since or {}).get(service) or {"runs": 0, "ms": 0.0}
        found[service] = {"runs": int(runs - before["runs"]), "ms": round(ms - before["ms"], 1)}
    return found


def measure(system: System, targets: list[Target], args: argparse.Namespace, label: str) -> dict[str, Any]:
    loads = scripts(targets, args.active)
    figures: dict[str, Any] = {}
    for name, connections in LOADS.items():
        if name not in args.loads.split(","):
            continue
        if args.warmup:
            run_wrk(system.base_url, loads[name], threads=2, connections=connections, duration=args.warmup,
                    timeout_s=30)
        cpu = CpuMeter(roles(system))
        loops = {service: LoopMeter(system.children.all[service].process.pid) for service in SERVICES}
        with profiled(system, args.profile, Path(tempfile.gettempdir()) / f"tenants_http-{label}-{name}.txt",
                      args.profile_gil):
            collections = full_collections(system)
            cpu.start()
            for loop in loops.values():
                loop.start()
            r = run_wrk(system.base_url, loads[name], threads=2, connections=connections, duration=args.duration,
                        statuses=True, timeout_s=30)
            cores = cpu.stop()
            occupied = {service: loop.stop() for service, loop in loops.items()}
            collections = full_collections(system, since=collections)
        seconds = r["duration_us"] / 1e6
        figures[name] = {"requests_per_s": round(r["requests"] / seconds, 1), "p50_ms": r["p50_us"] / 1000,
                         "p99_ms": r["p99_us"] / 1000, "non_2xx": r["non_2xx"], "socket_errors": r["socket_errors"],
                         "statuses": r["statuses"], "cpu_cores": cores, "loop": occupied,
                         "gc_full": collections}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--active", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shops", default="one,many", help="which shops to measure (one, many or both)")
    parser.add_argument("--loads", default=",".join(LOADS), help="which loads to run (comma-separated)")
    parser.add_argument("--profile", metavar="PROCESS", help="py-spy this service process (e.g. cart) during each "
                        "load: collapsed stacks to $TMPDIR/tenants_http-<shop>-<round>-<load>.txt")
    parser.add_argument("--profile-gil", action="store_true", help="sample only the thread holding the GIL")
    args = parser.parse_args()
    many_dir = Path(tempfile.mkdtemp(prefix="cartwheel-bench-many-"))
    rows: dict[str, list[dict[str, Any]]] = {"one": [], "many": []}
    try:
        tokens, seconds = register(many_dir, args.tenants)
        print(json.dumps({"bench": "tenants_http", "registered": args.tenants, "create_and_migrate_s":
                          round(seconds, 1)}), flush=True)
        for round_no in range(1, args.repeat + 1):
            for mode in [m for m in ("one", "many") if m in args.shops.split(",")]:
                var_dir = many_dir if mode == "many" else Path(tempfile.mkdtemp(prefix="cartwheel-bench-one-"))
                try:
                    with shop(var_dir, args.workers) as system:
                        if mode == "one":
                            targets = [Target(system.base_url, f"127.0.0.1:{system.settings.gateway_port}",
                                              system.admin_token)]
                        else:
                            names = sorted(tokens)[: args.active]
                            targets = [Target(system.base_url, f"{n}.shops.test", tokens[n]) for n in names]
                        figures = measure(system, targets, args, f"{mode}-{round_no}")
                finally:
                    if mode == "one":
                        shutil.rmtree(var_dir, ignore_errors=True)
                row = {"bench": "tenants_http", "shop": mode, "round": round_no, "tenants_registered":
                       args.tenants if mode == "many" else 0, "tenants_active": args.active if mode == "many" else 1,
                       "cpus": os.cpu_count(), **figures}
                rows[mode].append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(many_dir, ignore_errors=True)
    summary: dict[str, Any] = {"bench": "tenants_http", "summary": True, "rounds": args.repeat, "loads": {}}
    for name in [n for n in LOADS if n in args.loads.split(",")] if all(rows.values()) else ():
        med = {mode: {k: statistics.median(r[name][k] for r in rows[mode]) for k in ("requests_per_s", "p99_ms")}
               for mode in rows}
        ratio = med["many"]["requests_per_s"] / med["one"]["requests_per_s"]
        p99 = med["many"]["p99_ms"] / med["one"]["p99_ms"] if med["one"]["p99_ms"] else None
        summary["loads"][name] = {"one": med["one"], "many": med["many"], "throughput_ratio": round(ratio, 3),
                                  "p99_ratio": round(p99, 3) if p99 else None,
                                  "within_20_percent": ratio >= 0.8 and (p99 is None or p99 <= 1.2)}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
