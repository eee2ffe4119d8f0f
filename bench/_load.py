"""A closed-loop load generator for one asyncio process: N attempts, at most C in flight, a hard deadline.

Each attempt is an ``attempt(i)`` coroutine that returns ``True`` (sold), ``False`` (refused, e.g.
out of stock) or raises (an error; ``TimeoutError`` counts as a timeout). By default C workers
share one iterator of indexes, so exactly C attempts are in flight without creating N tasks: the
client's CPU is what limits the fast variants, and the generator should spend as little of it as
it can.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Attempt = Callable[[int], Awaitable[bool]]

ONE_ADDRESS_IS_MANY_CLIENTS: dict[str, Any] = {
    "gateway_max_requests_per_address": 100_000, "sse_max_per_address": 100_000, "sse_max_per_cart": 100_000,
}
"""Settings of a shop under a load test: every simulated client comes from 127.0.0.1, which the gateway's
per-address caps would otherwise treat as one client (services/gateway/guard.py)."""


@dataclass
class Run:
    planned: int
    concurrency: int
    generator: str = "workers"
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    sold_latencies_ms: list[float] = field(default_factory=list)
    sold_at_s: list[float] = field(default_factory=list)
    """Seconds from the start at which each sale was answered."""
    refused: int = 0
    errors: int = 0
    timeouts: int = 0
    first_error: str | None = None
    deadline_hit: bool = False
    cpu_cores: dict[str, float | None] = field(default_factory=dict)
    """CPU time per wall second during the run (1.0 = one core busy) per process role, and the whole host."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, from /proc (Linux); ``None`` where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ...
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy (not idle or waiting on I/O) since boot, from /proc/stat."""
    try:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main_thread_schedstat(pid: int) -> tuple[float, float, int] | None:
    """Seconds a process's main thread (its event loop, in a service) has run on a CPU and waited for one, from
    /proc/<pid>/task/<pid>/schedstat, and the process's start time (a pid used again reads as another process);
    ``None`` where unreadable (Linux only)."""
    try:
        on_cpu_ns, waiting_ns = map(int, Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[:2])
        started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return on_cpu_ns / 1e9, waiting_ns / 1e9, started


class LoopMeter:
    """How one process's main thread spent the wall time: on a CPU, waiting for one (runnable, another process's
    turn), and ``occupied``, the two together. Near 1.0 its event loop never waited for work: that is where a load
    queues. The rest it slept: idle, or blocked (in a system call, on the GIL another thread holds)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before: tuple[float, float, int] | None = None
        self.began = 0.0

    def start(self) -> None:
        self.before, self.began = main_thread_schedstat(self.pid), time.monotonic()

    def stop(self, digits: int = 3) -> dict[str, float] | None:
        """The shares since :meth:`start`; None if the process is gone or was replaced meanwhile."""
        after, wall = main_thread_schedstat(self.pid), time.monotonic() - self.began
        if self.before is None or after is None or after[2] != self.before[2]:
            return None
        on_cpu, waiting = ((a - b) / wall for a, b in zip(after[:2], self.before[:2], strict=True))
        return {"on_cpu": round(on_cpu, digits), "waiting_for_cpu": round(waiting, digits),
                "occupied": round(on_cpu + waiting, digits)}


class CpuMeter:
    """How busy this process and the given ones (by role) were between :meth:`start` and :meth:`stop`."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = {"client": [os.getpid()], **roles}
        self.before: dict[str, float | None] = {}
        self.began = 0.0

    def _read(self) -> dict[str, float | None]:
        totals: dict[str, float | None] = {}
        for role, pids in self.roles.items():
            values = [cpu_seconds(pid) for pid in pids]
            totals[role] = None if None in values else sum(v for v in values if v is not None)
        totals["host"] = host_busy_seconds()  # everything on the machine: shows other load during the run
        return totals

    def start(self) -> None:
        self.before, self.began = self._read(), time.monotonic()

    def stop(self, digits: int = 2) -> dict[str, float | None]:
        after, wall = self._read(), time.monotonic() - self.began
        return {role: round((after[role] - b) / wall, digits) if b is not None and after[role] is not None else None
                for role, b in self.before.items()}


async def drive(attempt: Attempt, attempts: int, concurrency: int, deadline_s: float,
                generator: str = "workers") -> Run:
    """Run ``attempts`` attempts with ``concurrency`` in flight; stop whatever is left after ``deadline_s``.

    ``workers``: C coroutines take the next index in turn. ``tasks``: one task per attempt behind a
    semaphore of C, which costs the client more per attempt (about half the echo rate here).
    """
    run = Run(planned=attempts, concurrency=concurrency, generator=generator)
    clock = time.monotonic
    start = clock()

    async def one(i: int) -> None:
        began = clock()
        try:
            sold = await attempt(i)
        except TimeoutError:
            run.timeouts += 1
            return
        except Exception as exc:  # a benchmark counts failures, it does not stop on them
            run.errors += 1
            run.first_error = run.first_error or f"{type(exc).__name__}: {exc}"
            return
        done = clock()
        ms = (done - began) * 1000
        run.latencies_ms.append(ms)
        if sold:
            run.sold_latencies_ms.append(ms)
            run.sold_at_s.append(done - start)
        else:
            run.refused += 1

    indexes = iter(range(attempts))

    async def worker() -> None:
        for i in indexes:  # shared iterator: each index goes to exactly one worker
            await one(i)

    gate = asyncio.Semaphore(concurrency)

    async def gated(i: int) -> None:
        async with gate:
            await one(i)

    if generator == "workers":
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    else:
        tasks = [asyncio.create_task(gated(i)) for i in range(attempts)]
    _, pending = await asyncio.wait(tasks, timeout=deadline_s)
    run.deadline_hit = bool(pending)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    run.elapsed_s = clock() - start
    return run


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of unsorted ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without floats
    return round(ordered[int(rank) - 1], 2)


def summarize(run: Run, stock: int | None) -> dict[str, Any]:
    """The figures every variant reports; ``stock=None`` for a variant that sells without a stock check."""
    answered = len(run.latencies_ms)
    sold = len(run.sold_latencies_ms)
    finished = answered + run.errors + run.timeouts
    sold_out_at = sorted(run.sold_at_s)[stock - 1] if stock and sold >= stock else None
    return {
        "attempts": finished,
        "attempts_planned": run.planned,
        "concurrency": run.concurrency,
        "load_generator": run.generator,
        "elapsed_s": round(run.elapsed_s, 3),
        "attempts_per_s": round(finished / run.elapsed_s) if run.elapsed_s else 0,
        "p50_ms": percentile(run.latencies_ms, 50),
        "p95_ms": percentile(run.latencies_ms, 95),
        "p99_ms": percentile(run.latencies_ms, 99),
        "max_ms": round(max(run.latencies_ms), 2) if run.latencies_ms else None,
        "sold_p50_ms": percentile(run.sold_latencies_ms, 50),
        "sold_p95_ms": percentile(run.sold_latencies_ms, 95),
        "sold_p99_ms": percentile(run.sold_latencies_ms, 99),
        "stock": stock,
        "sold": sold,
        "refused": run.refused,
        "oversold": sold - stock if stock is not None else None,
        "time_to_sell_out_s": round(sold_out_at, 3) if sold_out_at is not None else None,
        "errors": run.errors,
        "timeouts": run.timeouts,
        "first_error": run.first_error,
        "deadline_hit": run.deadline_hit,
        "cpu_cores": run.cpu_cores,
    }
