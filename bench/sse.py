"""Open cart event streams (``GET /api/cart/events``) and what they cost the gateway's API.

Starts the shop the way `cartwheel up` does (on free ports, in a temporary var dir, 2 gateway
workers by default), makes one product and one cart per stream, then, for each number of open
streams (0, then 500, 1,000, 2,000 by default; streams stay open from one level to the next):

- ``api``: wrk on ``GET /api/products/<id>`` for ``--duration`` s while the streams are open;
- ``update_ms``: ``--updates`` times, an add to the "hot" cart (``--hot`` streams watch it) over
  HTTP, and the time from sending it until every one of those streams had the new cart
  (``first`` is the first stream); the other streams must get nothing (``stray_events``);
- ``gateway_rss_mb`` / ``gateway_pss_mb``: gunicorn master and workers (PSS splits shared pages);
- ``server_streams``: what the gateway's /metrics says is open (summed over workers).

Finally, with every stream still open, SIGTERM to the gateway: how long until it has exited and
how many streams the server ended itself (their browsers would reconnect elsewhere).

The client is one asyncio process speaking HTTP/1.0 (the body is the raw event stream). Prints
one JSON line per level and one for the stop. Everything shares the machine's cores. Not part of
the test run.

    python bench/sse.py                         # 500, 1000, 2000 streams
    python bench/sse.py --streams 100 --duration 5 --updates 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from _load import ONE_ADDRESS_IS_MANY_CLIENTS, percentile
from _wrk import run_wrk
from cart import descendants, make_products, open_carts

from cartwheel.natsserver import free_port, signal_group
from cartwheel.settings import Settings
from cartwheel.supervisor import GATEWAY, System

OPEN_AT_ONCE = 100  # connections being opened at a time, so the accept queue never overflows


class Target:
    """Waiting for every hot stream to show ``item_count`` >= ``count``."""

    def __init__(self, count: int, streams: int) -> None:
        self.count = count
        self.remaining = streams
        self.sent_at = time.monotonic()
        self.first_at: float | None = None
        self.all_at = 0.0
        self.done = asyncio.Event()

    def reached(self) -> None:
        now = time.monotonic()
        self.first_at = self.first_at or now
        self.remaining -= 1
        if self.remaining == 0:
            self.all_at = now
            self.done.set()


class Stream:
    def __init__(self, cookie: str, hot: bool, bench: Bench) -> None:
        self.cookie, self.hot, self.bench = cookie, hot, bench
        self.events = 0
        self.item_count = -1
        self.ended_by_server = False
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, host: str, port: int) -> None:
        reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(
            f"GET /api/cart/events HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Cookie: cart={self.cookie}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0] or b"text/event-stream" not in head:
            raise RuntimeError(f"not a stream: {head[:200]!r}")
        first = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._read(reader, first))
        await first  # the first event (the current cart) has arrived

    async def _read(self, reader: asyncio.StreamReader, first: asyncio.Future[None]) -> None:
        try:
            while line := await reader.readline():
                if not line.startswith(b"data: "):
                    continue
                self.events += 1
                self.item_count = json.loads(line[6:])["item_count"]
                if not first.done():
                    first.set_result(None)
                elif self.hot:
                    target = self.bench.target
                    if target is not None and self.item_count == target.count:
                        target.reached()
                else:
                    self.bench.stray_events += 1
            self.ended_by_server = True
        except (ConnectionError, asyncio.IncompleteReadError):
            self.ended_by_server = True
        finally:
            if not first.done():
                first.set_exception(RuntimeError("the stream ended before its first event"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Bench:
    def __init__(self, shop: System, args: argparse.Namespace) -> None:
        self.shop, self.args = shop, args
        url = urlsplit(shop.base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.streams: list[Stream] = []
        self.target: Target | None = None
        self.stray_events = 0

    async def open_streams(self, cookies: list[tuple[str, bool]]) -> float:
        began = time.monotonic()
        gate = asyncio.Semaphore(OPEN_AT_ONCE)

        async def one(cookie: str, hot: bool) -> None:
            stream = Stream(cookie, hot, self)
            async with gate:
                await stream.open(self.host, self.port)
            self.streams.append(stream)

        await asyncio.gather(*(one(cookie, hot) for cookie, hot in cookies))
        return time.monotonic() - began

    async def updates(self, hot_cookie: str, product_id: str, count: int) -> dict[str, Any]:
        hot = [s for s in self.streams if s.hot]
        all_ms, first_ms, http_ms = [], [], []
        for _ in range(count):
            target = self.target = Target(hot[0].item_count + 1, len(hot))
            answered = await self.post_add(hot_cookie, product_id)
            http_ms.append((answered - target.sent_at) * 1000)
            await asyncio.wait_for(target.done.wait(), 10)
            all_ms.append((target.all_at - target.sent_at) * 1000)
            first_ms.append(((target.first_at or target.all_at) - target.sent_at) * 1000)
            self.target = None
            await asyncio.sleep(0.1)
        return {
            "hot_streams": len(hot),
            "updates": count,
            "to_all_p50": round(statistics.median(all_ms), 1),
            "to_all_p95": percentile(all_ms, 95),
            "to_all_max": round(max(all_ms), 1),
            "to_first_p50": round(statistics.median(first_ms), 1),
            "http_add_p50": round(statistics.median(http_ms), 1),
        }

    async def post_add(self, cookie: str, product_id: str) -> float:
        body = json.dumps({"product_id": product_id, "quantity": 1}).encode()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(
            f"POST /api/cart/items HTTP/1.0\r\nHost: {self.host}\r\nCookie: cart={cookie}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        answer = await reader.read()
        writer.close()
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"add failed: {answer[:300]!r}")
        return time.monotonic()

    def api(self, product_id: str, duration: int | None = None) -> dict[str, Any]:
        script = f'request = function() return wrk.format("GET", "/api/products/{product_id}") end\n'
        a = self.args
        r = run_wrk(self.shop.base_url, script, threads=a.threads, connections=a.connections,
                    duration=duration or a.duration)
        return {
            "path": "/api/products/<id>",
            "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6)),
            "p50_ms": round(r["p50_us"] / 1000, 2),
            "p99_ms": round(r["p99_us"] / 1000, 2),
            "max_ms": round(r["max_us"] / 1000, 2),
            "non_2xx": r["non_2xx"],
            "errors": r["socket_errors"],
            "connections": a.connections,
        }

    def server_streams(self) -> float | None:
        text = requests.get(f"{self.shop.base_url}/metrics", timeout=10).text
        values = [float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("cartwheel_gateway_cart_streams ")]
        return sum(values) if values else None

    def gateway_pids(self) -> list[int]:
        return descendants(self.shop.children.all[GATEWAY].process.pid)


def memory_mb(pids: list[int]) -> dict[str, float]:
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return {"gateway_rss_mb": round(rss / 1024, 1), "gateway_pss_mb": round(pss / 1024, 1)}


async def run(shop: System, args: argparse.Namespace) -> None:
    bench = Bench(shop, args)
    levels = sorted(args.streams)
    (product,) = make_products(shop.base_url, shop.admin_token, 1)
    started = time.monotonic()
    cookies = await asyncio.to_thread(open_carts, shop.base_url, [product], levels[-1] - args.hot + 1)
    hot_cookie, other_cookies = cookies[0], cookies[1:]
    common = {"bench": "sse", "gateway_workers": args.workers, "cpus": os.cpu_count()}
    print(json.dumps({**common, "setup": True, "carts": len(cookies),
                      "carts_opened_s": round(time.monotonic() - started, 1)}), flush=True)

    if args.warmup:  # caches and connections warm, so the first level is not measured cold
        await asyncio.to_thread(bench.api, product["id"], args.warmup)
    baseline = await asyncio.to_thread(bench.api, product["id"])
    print(json.dumps({**common, "streams": 0, "api": baseline, **memory_mb(bench.gateway_pids())}), flush=True)

    wanted: list[tuple[str, bool]] = [(hot_cookie, True)] * args.hot + [(c, False) for c in other_cookies]
    for level in levels:
        opened_s = await bench.open_streams(wanted[len(bench.streams):level])
        update = await bench.updates(hot_cookie, product["id"], args.updates)
        api = await asyncio.to_thread(bench.api, product["id"])
        alive = sum(1 for s in bench.streams if not s.ended_by_server)
        print(json.dumps({
            **common,
            "streams": len(bench.streams),
            "alive_after_wrk": alive,
            "server_streams": await asyncio.to_thread(bench.server_streams),
            "opened_s": round(opened_s, 2),
            "update_ms": update,
            "stray_events": bench.stray_events,
            "api": api,
            **memory_mb(bench.gateway_pids()),
        }), flush=True)

    # A graceful stop with every stream open: the worker ends them at once instead of waiting them out.
    gateway = shop.children.all[GATEWAY].process
    began = time.monotonic()
    signal_group(gateway, signal.SIGTERM)  # as `cartwheel up` stops it: master and workers at once
    await asyncio.to_thread(gateway.wait, 30)
    exit_s = time.monotonic() - began
    await asyncio.sleep(0.2)
    print(json.dumps({
        **common,
        "stop": True,
        "streams": len(bench.streams),
        "gateway_exit_s": round(exit_s, 2),
        "ended_by_server": sum(1 for s in bench.streams if s.ended_by_server),
    }), flush=True)
    for stream in bench.streams:
        stream.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, action="append", help="open streams at each level (repeatable)")
    parser.add_argument("--hot", type=int, default=20, help="streams watching the cart that changes")
    parser.add_argument("--updates", type=int, default=20, help="changes to the hot cart per level")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per level")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured wrk before the first level")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    args = parser.parse_args()
    args.streams = args.streams or [500, 1000, 2000]
    if not shutil.which("wrk"):
        print("bench/sse.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max(args.streams) + 1000  # this client's sockets; the gateway inherits the limit too
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))

    var_dir = Path(tempfile.mkdtemp(prefix="cw-sse-bench-"))
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", gateway_port=free_port(),
                        **ONE_ADDRESS_IS_MANY_CLIENTS,
                        gateway_workers=args.workers, metrics_port=0, log_level="WARNING")
    with (var_dir / "system.log").open("w") as log, System(settings, out=log, colour=False, seed=False) as shop:
        asyncio.run(run(shop, args))
    shutil.rmtree(var_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
