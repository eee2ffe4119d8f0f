"""Flash sale: one hot product, stock S, N attempts to reserve 1 at concurrency C, four ways side by side.

Every variant is driven from this one asyncio process (one nats-py connection for the NATS
variants) and starts what it needs itself: its own nats-server from the wheel on a free port,
its own worker processes, its own PostgreSQL table. One JSON line per measured variant, then a
summary line with the ratios. Not part of the test run.

    python bench/flash_sale.py                                  # everything: S=1000, N=20000, C=200
    python bench/flash_sale.py --only echo,postgres_hot_row --attempts 5000
    python bench/flash_sale.py --replicas 1,2 --db postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/flash_sale.py --repeat 3                       # the summary takes medians

Variants (``--only``):
  lanes             inventory service (R replica processes) through ``LaneClient.call(.., "reserve")``
  lanes_spread      the same, attempts spread over ``--products`` keys, each with enough stock
  echo              the ceiling: a bare core-NATS echo subscriber in its own process
  postgres_hot_row  ``UPDATE .. SET available = available - 1 WHERE .. AND available >= 1``, K connections
  naive_faststream  a FastStream pull subscriber, ``max_ack_pending=1``, SQLite, reply after commit
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psycopg
from _load import Attempt, CpuMeter, Run, drive, summarize
from _naive_faststream import REPLY_HEADER
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from psycopg import sql
from sqlalchemy.engine import make_url

from cartwheel import bus, natsserver, subjects
from cartwheel.contracts.inventory import MAX_STOCKS_PER_QUERY, GetStocks, ReserveStock, SetStock
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes import partition_of
from cartwheel.lanes.client import LaneClient
from services.inventory.domain import LANE

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VARIANTS = ("lanes", "lanes_spread", "echo", "postgres_hot_row", "naive_faststream")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
CLIENT = "client: this one asyncio process (no uvloop)"


# ---------------------------------------------------------------- shared set-up


@contextlib.contextmanager
def nats_server(tmp: Path) -> Iterator[natsserver.NatsServer]:
    """A fresh nats-server with JetStream (file store under ``tmp``) on a free port, per variant."""
    server = natsserver.NatsServer(tmp / "nats", natsserver.free_port())
    with (tmp / "nats-server.log").open("wb") as log:
        server.start(output=log)
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


def child(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return natsserver.spawn([sys.executable, *argv], output=out, env=env, cwd=REPO)


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


async def wait_for_answer(nc: NATS, subject: str, process: subprocess.Popen[bytes], log: Path,
                          timeout: float = 30.0) -> None:
    """Until a request on ``subject`` gets an answer (the child is subscribed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{subject}: worker exited with {process.returncode}\n{tail(log)}")
        with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await nc.request(subject, b"{}", timeout=0.5)
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{subject}: no answer within {timeout:.0f} s\n{tail(log)}")


def reserve_commands(products: list[str], count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(product, command id, body) of ``count`` reserves over ``products``; built before the clock starts."""
    commands = []
    for i in range(count):
        cmd = ReserveStock(product_id=products[i % len(products)], reservation_id=f"res-{i}", order_id=f"ord-{i}",
                           quantity=1, ttl_seconds=900)
        commands.append((cmd.product_id, cmd.id, cmd.model_dump(mode="json")))
    return commands


def payloads(count: int) -> list[bytes]:
    """The bytes ``LaneClient`` would send for ``count`` reserves, so every variant carries the same messages."""
    return [bus.encode({"kind": ReserveStock.kind, "body": body})
            for _, _, body in reserve_commands(["hot-product"], count)]


async def measure(attempt: Attempt, args: argparse.Namespace, warmup: Attempt | None = None,
                  processes: dict[str, list[int]] | None = None) -> Run:
    """Warm up on another key, then the measured run, with the CPU use of the client and of ``processes``."""
    if warmup and args.warmup:
        await drive(warmup, args.warmup, args.concurrency, args.deadline, args.generator)
    meter = CpuMeter(processes or {})
    meter.start()
    run = await drive(attempt, args.attempts, args.concurrency, args.deadline, args.generator)
    run.cpu_cores = meter.stop()
    return run


# ---------------------------------------------------------------- echo: the ceiling


async def echo(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    subject = f"flashbench.echo.{secrets.token_hex(4)}"
    log = tmp / "echo.log"
    with nats_server(tmp) as server:
        worker = child([str(BENCH / "_echo_server.py"), server.url, subject], log)
        try:
            async with connected(server.url) as nc:
                await wait_for_answer(nc, subject, worker, log)
                bodies = payloads(args.attempts)

                async def attempt(i: int) -> bool:
                    await nc.request(subject, bodies[i], timeout=args.request_timeout)
                    return True

                run = await measure(attempt, args, warmup=attempt,
                                    processes={"nats_server": [server.process.pid], "echo": [worker.pid]})
        finally:
            natsserver.terminate(worker)
    return {
        "variant": "echo",
        "layout": f"{CLIENT}, 1 nats-py connection, nc.request; nats-server: own process; "
                  "echo: own process, one nats-py subscriber answering msg.respond(data); no stock, no storage",
        **summarize(run, stock=None),
    }


# ---------------------------------------------------------------- PostgreSQL hot row


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class ConnectionPool:
    """Connections handed out first come, first served.

    With an ``asyncio.Queue`` a worker that puts its connection back takes it again at once, before
    the woken waiter runs: some attempts starved for the whole run (max latency = run time).
    """

    def __init__(self, conns: list[psycopg.AsyncConnection]) -> None:
        self.free = list(conns)
        self.waiters: collections.deque[asyncio.Future[psycopg.AsyncConnection]] = collections.deque()

    async def acquire(self) -> psycopg.AsyncConnection:
        if self.free and not self.waiters:
            return self.free.pop()
        turn = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(turn.result())
            raise

    def release(self, conn: psycopg.AsyncConnection) -> None:
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(conn)
                return
        self.free.append(conn)


async def usable_connections(admin: psycopg.AsyncConnection, wanted: int) -> tuple[int, int]:
    """(connections we may open, max_connections): what is left after reserved slots, current backends, 5 spare."""
    cur = await admin.execute(
        "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    )
    max_conn, reserved, in_use = await cur.fetchone()
    return max(1, min(wanted, max_conn - reserved - in_use - 5)), max_conn


async def postgres_hot_row(args: argparse.Namespace, connections: int) -> dict[str, Any]:
    url = psycopg_url(args.postgres_url)
    table = sql.Identifier(f"flash_stock_{secrets.token_hex(4)}")
    product, warm = "hot-product", "warmup-product"
    admin = await psycopg.AsyncConnection.connect(url, autocommit=True)
    conns: list[psycopg.AsyncConnection] = []
    try:
        used, max_conn = await usable_connections(admin, connections)
        server_version = (await (await admin.execute("SHOW server_version")).fetchone())[0]
        await admin.execute(sql.SQL("CREATE TABLE {} (product_id text PRIMARY KEY, available integer NOT NULL)")
                            .format(table))
        await admin.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s), (%s, %s)").format(table),
                            (product, args.stock, warm, args.warmup))
        for start in range(0, used, 10):  # a few at a time: 100 simultaneous connects time out on 2 cores
            conns += await asyncio.gather(*(psycopg.AsyncConnection.connect(url, autocommit=True)
                                            for _ in range(min(10, used - start))))
        pool = ConnectionPool(conns)
        decrement = sql.SQL("UPDATE {} SET available = available - 1 WHERE product_id = %s AND available >= 1"
                            ).format(table)

        def attempt_on(key: str) -> Attempt:
            async def attempt(i: int) -> bool:
                conn = await pool.acquire()  # waiting for a free connection is part of the attempt's latency
                try:
                    cur = await conn.execute(decrement, (key,), prepare=True)
                    return cur.rowcount == 1
                finally:
                    pool.release(conn)
            return attempt

        backends = [(await (await c.execute("SELECT pg_backend_pid()")).fetchone())[0] for c in conns]
        run = await measure(attempt_on(product), args, warmup=attempt_on(warm), processes={"postgres": backends})
        cur = await admin.execute(sql.SQL("SELECT available FROM {} WHERE product_id = %s").format(table), (product,))
        left = (await cur.fetchone())[0]
    finally:
        await asyncio.gather(*(c.close() for c in conns))
        with contextlib.suppress(psycopg.Error):
            await admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        await admin.close()
    return {
        "variant": "postgres_hot_row",
        "layout": f"{CLIENT}, {used} psycopg 3 async connections (autocommit, prepared UPDATE, one per attempt; "
                  f"attempts queue for a free connection); PostgreSQL {server_version}: local server on the same cores",
        "connections": used,
        "connections_requested": connections,
        "max_connections": max_conn,
        **summarize(run, stock=args.stock),
        "store_sold": args.stock - left,
    }


# ---------------------------------------------------------------- naive FastStream subscriber


def sqlite_stock(path: Path, stock: dict[str, int]) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE stock (product_id TEXT PRIMARY KEY, available INTEGER NOT NULL)")
        db.executemany("INSERT INTO stock VALUES (?, ?)", stock.items())


def sqlite_available(path: Path, product: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT available FROM stock WHERE product_id = ?", (product,)).fetchone()[0]


class ReplyInbox:
    """One wildcard inbox subscription; each call waits on its own future (like a lane client)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.waiting: dict[str, asyncio.Future[bytes]] = {}

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.*", cb=self._answer)

    async def _answer(self, msg: Msg) -> None:
        future = self.waiting.pop(msg.subject, None)
        if future and not future.done():
            future.set_result(msg.data)

    def expect(self, i: int) -> tuple[str, asyncio.Future[bytes]]:
        subject = f"{self.prefix}.{i}"
        future = self.waiting[subject] = asyncio.get_running_loop().create_future()
        return subject, future


async def naive_faststream(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    prefix, stream = f"flashbench.naive{secrets.token_hex(3)}", f"FLASHBENCH_NAIVE_{secrets.token_hex(3)}"
    product, warm = "hot-product", "warmup-product"
    db_path, log = tmp / "naive.db", tmp / "naive.log"
    sqlite_stock(db_path, {product: args.stock, warm: args.warmup})
    with nats_server(tmp) as server:
        worker = child([str(BENCH / "_naive_faststream.py"), server.url, prefix, stream, str(db_path)], log)
        try:
            async with connected(server.url) as nc:
                await wait_for_answer(nc, f"{prefix}.ready", worker, log)
                js, inbox = nc.jetstream(), ReplyInbox(nc)
                await inbox.start()
                bodies = payloads(args.attempts + args.warmup)

                def attempt_on(key: str, offset: int) -> Attempt:
                    async def attempt(i: int) -> bool:
                        reply_to, answer = inbox.expect(offset + i)
                        try:
                            await js.publish(f"{prefix}.cmd.{key}", bodies[offset + i],
                                             headers={REPLY_HEADER: reply_to}, timeout=args.request_timeout)
                            return await asyncio.wait_for(answer, args.request_timeout) == b"1"
                        finally:
                            inbox.waiting.pop(reply_to, None)
                    return attempt

                run = await measure(attempt_on(product, 0), args, warmup=attempt_on(warm, args.attempts),
                                    processes={"nats_server": [server.process.pid], "worker": [worker.pid]})
        finally:
            natsserver.terminate(worker)
    return {
        "variant": "naive_faststream",
        "layout": f"{CLIENT}, 1 nats-py connection, acked js.publish with a reply-subject header, one shared "
                  "reply inbox; nats-server: own process, file-store stream; worker: own process, FastStream "
                  "PullSub(batch_size=1) durable, max_ack_pending=1, SQLite WAL synchronous=NORMAL, "
                  "reply published after commit, ack after the handler",
        **summarize(run, stock=args.stock),
        "store_sold": args.stock - sqlite_available(db_path, product),
    }


# ---------------------------------------------------------------- lanes: the inventory service


@contextlib.contextmanager
def inventory_database(args: argparse.Namespace, tmp: Path) -> Iterator[str]:
    """A fresh inventory database: a SQLite file in ``tmp``, or a new PostgreSQL database dropped afterwards."""
    if not args.db:
        yield f"sqlite:///{tmp / 'inventory.db'}"
        return
    url = make_url(args.db)
    name = f"cw_flash_{secrets.token_hex(4)}"
    admin_url = psycopg_url(url.render_as_string(hide_password=False))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start_inventory(replicas: int, nats_url: str, db_url: str, tmp: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "CARTWHEEL_NATS_URL": nats_url, "CARTWHEEL_VAR_DIR": str(tmp),
           "CARTWHEEL_INVENTORY_DATABASE_URL": db_url, "CARTWHEEL_METRICS_PORT": "0",
           "CARTWHEEL_LOG_LEVEL": "WARNING"}
    return [child(["-m", "services.inventory"], tmp / f"inventory-{r}.log", env) for r in range(replicas)]


async def wait_healthy(nc: NATS, replicas: list[subprocess.Popen[bytes]], tmp: Path, timeout: float = 60.0) -> None:
    """Until every replica answers health ``ok`` (health goes to every replica, so collect the answers)."""
    healthy: set[str] = set()

    async def answered(msg: Msg) -> None:
        if not msg.data:  # a no-responders status while nobody subscribes yet
            return
        reply = json.loads(msg.data)
        if reply.get("status") == "ok":
            healthy.add(reply.get("instance", ""))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=answered)
    deadline = time.monotonic() + timeout
    try:
        while len(healthy) < len(replicas):
            for r, process in enumerate(replicas):
                if process.poll() is not None:
                    raise RuntimeError(f"inventory replica {r} exited\n{tail(tmp / f'inventory-{r}.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(healthy)}/{len(replicas)} inventory replicas healthy after {timeout:.0f} s")
            await nc.publish(subjects.health("inventory"), b"", reply=inbox)
            await asyncio.sleep(0.5)
    finally:
        await sub.unsubscribe()


async def lease_owners(nc: NATS) -> dict[int, str]:
    """Partition → replica holding its lease, from the lane's KV bucket."""
    with contextlib.suppress(nats.js.errors.BucketNotFoundError):
        kv = await nc.jetstream().key_value(subjects.lane_bucket(LANE.name))
        found = {}
        for p in range(LANE.partitions):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                found[p] = (await kv.get(f"lease.{p}")).value.decode()
        return found
    return {}


async def wait_spread(nc: NATS, replicas: int, timeout: float = 30.0) -> dict[int, str]:
    """Until every partition is leased and every replica applies its share (within one)."""
    deadline = time.monotonic() + timeout
    while True:
        owners = await lease_owners(nc)
        shares = collections.Counter(owners.values())
        if len(owners) == LANE.partitions and len(shares) == replicas and max(shares.values()) - min(
                shares.values()) <= 1:
            return owners
        if time.monotonic() > deadline:
            raise RuntimeError(f"partitions not spread over {replicas} replicas after {timeout:.0f} s: {shares}")
        await asyncio.sleep(0.2)


async def set_stock(nc: NATS, product: str, on_hand: int) -> None:
    """Through the inventory service's admin command, as the gateway's stock route sends it."""
    await bus.request(nc, SetStock(product_id=product, on_hand=on_hand), timeout=10)


async def reserved_units(nc: NATS, products: list[str]) -> int:
    """Units the inventory service has stored as reserved, read back after the run."""
    total = 0
    for start in range(0, len(products), MAX_STOCKS_PER_QUERY):
        levels = await bus.request(nc, GetStocks(product_ids=products[start:start + MAX_STOCKS_PER_QUERY]), timeout=10)
        total += sum(level["reserved"] for level in levels["items"])
    return total


def reserving(client: LaneClient, commands: list[tuple[str, str, dict[str, Any]]], timeout: float) -> Attempt:
    async def attempt(i: int) -> bool:
        product, command_id, body = commands[i]
        try:
            await client.call(product, ReserveStock.kind, body, command_id=command_id, timeout=timeout)
        except DomainError as exc:
            if exc.code == "out_of_stock":
                return False
            raise
        except ServiceUnavailable as exc:
            raise TimeoutError(str(exc)) from None
        return True
    return attempt


async def lanes(args: argparse.Namespace, tmp: Path, replicas: int, wanted: set[str]) -> list[dict[str, Any]]:
    """The hot product (``lanes``) and/or ``--products`` keys (``lanes_spread``) on one fleet of replicas."""
    run_id = secrets.token_hex(3)
    lines = []
    with nats_server(tmp) as server, inventory_database(args, tmp) as db_url:
        fleet = start_inventory(replicas, server.url, db_url, tmp)
        try:
            async with connected(server.url) as nc:
                await wait_healthy(nc, fleet, tmp)
                owners = await wait_spread(nc, replicas)
                client = await LaneClient(nc, LANE.name).start()
                layout = (f"{CLIENT}, 1 nats-py connection, LaneClient.call (plain publish, shared reply inbox); "
                          f"nats-server: own process, file store; inventory: {replicas} process(es) "
                          f"`python -m services.inventory`, {LANE.partitions} partitions, "
                          f"{'PostgreSQL' if args.db else 'SQLite'}")
                fleet_info = {"replicas": replicas, "partitions_per_replica": sorted(
                    collections.Counter(owners.values()).values()), "inventory_db": make_url(db_url).get_backend_name()}
                processes = {"nats_server": [server.process.pid], **{f"inventory_{r}": [p.pid] for r, p in
                                                                     enumerate(fleet)}}
                warm = f"flash-{run_id}-warmup"
                await set_stock(nc, warm, args.warmup)
                warmup = reserving(client, reserve_commands([warm], args.warmup), args.request_timeout)
                if "lanes" in wanted:
                    hot = f"flash-{run_id}-hot"
                    await set_stock(nc, hot, args.stock)
                    commands = reserve_commands([hot], args.attempts)
                    run = await measure(reserving(client, commands, args.request_timeout), args, warmup, processes)
                    lines.append({"variant": "lanes", **fleet_info, "layout": layout,
                                  "hot_partition": partition_of(hot, LANE.partitions),
                                  **summarize(run, stock=args.stock), "store_sold": await reserved_units(nc, [hot])})
                if "lanes_spread" in wanted:
                    keys = [f"flash-{run_id}-p{k}" for k in range(args.products)]
                    each = -(-args.attempts // len(keys))
                    await drive(lambda k: set_stock(nc, keys[k], each), len(keys), args.concurrency, args.deadline)
                    commands = reserve_commands(keys, args.attempts)
                    run = await measure(reserving(client, commands, args.request_timeout), args, None, processes)
                    lines.append({"variant": "lanes_spread", **fleet_info, "layout": layout, "products": len(keys),
                                  "stock_per_product": each, **summarize(run, stock=None),
                                  "store_sold": await reserved_units(nc, keys)})
                await client.close()
        finally:
            for process in fleet:
                natsserver.terminate(process)
    return lines


# ---------------------------------------------------------------- the run and its summary


def median_rate(lines: list[dict[str, Any]], variant: str, **match: Any) -> float | None:
    rates = [ln["attempts_per_s"] for ln in lines
             if ln["variant"] == variant and all(ln.get(k) == v for k, v in match.items())]
    return statistics.median(rates) if rates else None


def summary(lines: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    echo_rate = median_rate(lines, "echo")
    pg_rates = [median_rate(lines, "postgres_hot_row", connections_requested=k) for k in args.pg_connections]
    pg_best = max((r for r in pg_rates if r), default=None)  # the fairest comparison: PostgreSQL's best pool size
    out: dict[str, Any] = {
        "summary": True,
        "echo_per_s": echo_rate,
        "postgres_best_per_s": pg_best,
        "naive_faststream_per_s": median_rate(lines, "naive_faststream"),
        "oversold_total": sum(max(0, ln["oversold"] or 0) for ln in lines),
        "repeat": args.repeat,
    }
    for r in args.replicas:
        rate = median_rate(lines, "lanes", replicas=r)
        if rate is None:
            continue
        p99s = [ln["p99_ms"] for ln in lines if ln["variant"] == "lanes" and ln.get("replicas") == r]
        out[f"lanes_r{r}_per_s"] = rate
        out[f"lanes_r{r}_p99_ms"] = round(statistics.median(p99s), 2)
        out[f"lanes_r{r}_per_echo"] = round(rate / echo_rate, 2) if echo_rate else None
        out[f"lanes_r{r}_per_postgres"] = round(rate / pg_best, 2) if pg_best else None
        out[f"lanes_spread_r{r}_per_s"] = median_rate(lines, "lanes_spread", replicas=r)
    return out


def emit(line: dict[str, Any], env: dict[str, Any]) -> None:
    print(json.dumps({"bench": "flash_sale", **line, **env}), flush=True)


async def run_all(args: argparse.Namespace) -> int:
    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "nats_server": natsserver.version(),
           "nats_py": version("nats-py"), "faststream": version("faststream"), "psycopg": psycopg.__version__}
    lines: list[dict[str, Any]] = []

    async def one(repeat: int, variant: str, coro: Any) -> None:
        with tempfile.TemporaryDirectory(prefix=f"cw-flash-{variant}-") as tmp:
            try:
                got = await coro(Path(tmp))
            except Exception as exc:  # report and go on: the other variants still mean something
                got = {"variant": variant, "failed": f"{type(exc).__name__}: {exc}"}
            for line in got if isinstance(got, list) else [got]:
                line["run"] = repeat
                emit(line, env)
                if "failed" not in line:
                    lines.append(line)

    for repeat in range(args.repeat):
        if "echo" in args.only:
            await one(repeat, "echo", lambda tmp: echo(args, tmp))
        if "postgres_hot_row" in args.only:
            for k in args.pg_connections:
                await one(repeat, "postgres_hot_row", lambda tmp, k=k: postgres_hot_row(args, k))
        if "naive_faststream" in args.only:
            await one(repeat, "naive_faststream", lambda tmp: naive_faststream(args, tmp))
        if args.only & {"lanes", "lanes_spread"}:
            for r in args.replicas:
                await one(repeat, "lanes", lambda tmp, r=r: lanes(args, tmp, r, args.only))
    emit(summary(lines, args), env)
    return 1 if any((ln["oversold"] or 0) > 0 for ln in lines) else 0


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--stock", type=int, default=1000, help="stock of the hot product (S)")
    parser.add_argument("--attempts", type=int, default=20000, help="reserve attempts per variant (N)")
    parser.add_argument("--concurrency", type=int, default=200, help="attempts in flight (C)")
    parser.add_argument("--warmup", type=int, default=500, help="attempts on another key before measuring")
    parser.add_argument("--products", type=int, default=1000, help="keys of lanes_spread")
    parser.add_argument("--replicas", type=int_list, default=[1, 2], help="inventory replicas to try, e.g. 1,2")
    parser.add_argument("--db", default=None, help="inventory database URL (default: SQLite in a temp dir)")
    parser.add_argument("--postgres-url", default=DEFAULT_PG, help="server of postgres_hot_row (a table is made)")
    parser.add_argument("--pg-connections", type=int_list, default=None,
                        help="connection counts of postgres_hot_row (default: 20 and C, capped by max_connections)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds one attempt may take")
    parser.add_argument("--deadline", type=float, default=180.0, help="hard limit in seconds per measured run")
    parser.add_argument("--generator", choices=("workers", "tasks"), default="workers",
                        help="workers: C coroutines loop (cheap); tasks: a task per attempt behind a semaphore")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every variant; the summary takes medians")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if unknown := args.only - set(VARIANTS):
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    args.pg_connections = args.pg_connections or sorted({20, args.concurrency})
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
