"""What tracing costs a request: RequestServer round trips through a local nats-server, client and server in one
process (so both sides' instrumentation counts), with spans off, off but carrying a client's trace, and on.

    python bench/tracing_overhead.py [--runs 5] [--requests 10000] [--concurrency 50]

Each mode runs in a process of its own, the modes in turn, ``--runs`` times; prints the median CPU µs per request
(client and server together).
``--base DIR``: also run against another checkout (say, the commit before tracing) as mode ``base``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
MODES = ("off", "off+traceparent", "on+file")


async def measure(url: str, mode: str, count: int, concurrency: int) -> float:
    import nats
    from prometheus_client import CollectorRegistry

    from cartwheel import bus
    from cartwheel.contracts.base import Message
    from cartwheel.requests import RequestServer

    class Ping(Message):
        subject: ClassVar[str] = "bench.ping"

    if mode != "base":
        from cartwheel import tracing

        if mode == "on+file":
            tracing.configure_tracing("bench", f"file:{os.devnull}")
        parent = tracing.context_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    nc = await nats.connect(url)
    server = RequestServer("bench", CollectorRegistry())

    async def pong(request: Ping) -> dict[str, int]:
        return {"pong": 1}

    server.add(Ping.subject, Ping, pong)
    await server.start(nc)
    await nc.flush()
    message = Ping()

    async def client(n: int) -> None:
        for _ in range(n):
            await bus.request(nc, message, 5.0)

    async def clients(n: int) -> None:
        await asyncio.gather(*(client(n // concurrency) for _ in range(concurrency)))

    async def traced(n: int) -> None:
        if mode in ("base", "off"):
            await clients(n)
        else:
            with tracing.span("bench", parent=parent):  # as a handler serving a traced request would ask on
                await clients(n)

    await traced(500)  # warm up
    began = time.process_time()  # CPU, not wall time: the machine is shared, and CPU is what tracing adds
    await traced(count)
    elapsed = time.process_time() - began
    await server.stop()
    await nc.close()
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--base", type=Path, help="another checkout to measure as mode 'base'")
    parser.add_argument("--child", nargs=2, metavar=("URL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(asyncio.run(measure(args.child[0], args.child[1], args.requests, args.concurrency)))
        return
    from cartwheel.natsserver import NatsServer, free_port

    modes = (("base",) if args.base else ()) + MODES
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as data, NatsServer(Path(data), free_port()) as server:
        for _ in range(args.runs):
            for mode in modes:
                path = str(args.base.resolve() if mode == "base" else ROOT)
                out = subprocess.run(
                    [sys.executable, __file__, "--requests", str(args.requests), "--concurrency",
                     str(args.concurrency), "--child", server.url, mode],
                    env={**os.environ, "PYTHONPATH": path}, cwd=path, check=True, capture_output=True, text=True)
                results[mode].append(float(out.stdout.strip().splitlines()[-1]))
    for mode, values in results.items():
        print(f"{mode:18} median {statistics.median(values):7.1f} CPU µs/request  runs {[round(v, 1) for v in values]}")


if __name__ == "__main__":
    main()
