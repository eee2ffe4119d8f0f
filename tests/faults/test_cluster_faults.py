"""A flash sale over HTTP on the cluster `cartwheel up --cluster` runs, while something fails under it.

The shop: three nats-servers as one JetStream cluster (streams at three replicas), three inventory
replicas, every database on a PostgreSQL server this module starts itself (initdb on a free port,
never the machine's shared server). Each scenario sells a fresh product to buyers who arrive over
a few seconds, each with an Idempotency-Key kept across retries, while one fault happens:

- (a) the nats-server leading the inventory lane's stream is SIGKILLed (the supervisor restarts it);
- (b) the PostgreSQL server is stopped at once (as by a crash) and started again;
- (c) the replica applying the product's partition is SIGSTOPped past its lease, then resumed;
- (d) an inventory replica is SIGKILLed every second (the supervisor restarts them);
- and the replica applying the product's partition is SIGKILLed once (the failover target).

Each ends with exactly the stock sold, every buyer answered (an order, or out of stock; a 503 or a
dropped connection is retried with the same key), and nothing applied twice: as many orders as
units reserved. Each prints how long the product's key went unanswered: the longest stretch in
which buyers were waiting and none got an answer (the test asserts no figure: timing belongs to
benches on this noisy machine: ``bench/cluster_faults.py`` runs these scenarios three times each and
prints the medians; the README has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import requests

from cartwheel import natsauth, subjects
from cartwheel.lanes import partition_of
from cartwheel.natsserver import free_port, port_is_free
from cartwheel.settings import Settings
from cartwheel.supervisor import StartupError, System
from services.inventory.domain import LANE as INVENTORY
from tests.helpers import random_sku

pytestmark = pytest.mark.faults

BUYERS = 48
STOCK = 24
ARRIVALS = 6.0  # seconds over which the buyers arrive
GIVE_UP = 90.0  # a buyer still unanswered this long after arriving fails the test
HOLDS_STOCK = ("pending", "reserved", "awaiting_payment")
RETRY = (408, 429, 503)  # answers that ask the buyer to try again (API.md); the same key makes it safe
PG_BIN = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


class OwnPostgres:
    """A PostgreSQL server of this test's own: initdb in a temporary folder, on a free port of loopback."""

    def __init__(self, folder: Path) -> None:
        assert PG_BIN is not None
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as_postgres, *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(argv[:1])} failed: {done.stdout}{done.stderr}"

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"),
                  "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of its own, removed afterwards."""
    if PG_BIN is None:
        raise RuntimeError("PostgreSQL's server programs are not installed (/usr/lib/postgresql/*/bin)")
    # Not under pytest's temporary folder: its parents are root's alone, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="cartwheel-faults-pg-"))
    server = OwnPostgres(folder)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(AssertionError):  # not running (it never started, or a fault left it stopped)
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def cluster_shop(var_dir: Path, postgres_url: str | None, *, cluster: bool = True) -> Iterator[System]:
    """``cartwheel up --cluster --scale inventory=3 [--postgres URL]``, on free ports, its output in var_dir (without
    ``cluster``: one nats-server)."""
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_nats_ports()}", embedded_nats=True,
                        gateway_host="127.0.0.1", gateway_port=free_port(), metrics_port=0)
    with (var_dir / "system.log").open("w", encoding="utf-8") as log:
        system = System(settings, out=log, colour=False, seed=False, cluster=cluster, scale={"inventory": 3},
                        postgres=postgres_url)
        try:
            system.start()
            yield system
        finally:
            system.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[OwnPostgres]:
    with own_postgres() as server:
        yield server


@pytest.fixture(scope="module", params=["postgresql", "sqlite", "one-nats-server"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The cluster on PostgreSQL, on SQLite (three inventory replicas sharing its file), and the default shop's one
    nats-server (on SQLite)."""
    var_dir = tmp_path_factory.mktemp(f"shop-{request.param}")
    url = request.getfixturevalue("postgres").url if request.param == "postgresql" else None
    try:
        with cluster_shop(var_dir, url, cluster=request.param != "one-nats-server") as system:
            yield system
    except StartupError as exc:
        pytest.fail(f"the cluster did not start: {exc}\n(full output: {var_dir / 'system.log'})", pytrace=False)


def free_nats_ports() -> int:
    """The first of three free ports in a row (the cluster's client ports)."""
    for _ in range(50):
        first = free_port()
        if all(port_is_free(first + i) for i in (1, 2)):
            return first
    raise RuntimeError("no three free ports in a row")


# ------------------------------------------------------------------------------------------ the sale


@dataclass
class Buyer:
    session: requests.Session
    key: str
    arrives: float
    tries: int = 0
    order_id: str | None = None
    sold_out: bool = False
    refused: list[str] = field(default_factory=list)  # what went wrong on the way (retried)
    wrong: str | None = None  # an answer a shop must not give (a 500, ...)
    waited_to_start: float = 0.0  # seconds its first visit (an add to cart) took, retries included
    answered_at: float | None = None


@dataclass
class SaleResult:
    buyers: list[Buyer]
    answers: list[float]  # moments (monotonic) at which any buyer got a final answer
    started: float

    def longest_unanswered(self) -> float:
        """The longest stretch while some buyer waited in which no buyer got an answer."""
        waiting = sorted((b.arrives, b.answered_at or b.arrives) for b in self.buyers)
        moments = sorted(self.answers)
        longest = 0.0
        for arrived, answered in waiting:  # for each buyer: the longest gap between answers while it waited
            last = arrived
            for at in moments:
                if at <= arrived:
                    continue
                if at > answered:
                    break
                longest = max(longest, at - last)
                last = at
        return longest


def admin(shop: System) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {shop.admin_token}"
    return session


def new_product(shop: System, stock: int) -> str:
    body = {"sku": random_sku(), "name": "Flash sale", "price_cents": 1500, "currency": "EUR", "stock": stock}
    made = admin(shop).post(f"{shop.base_url}/api/admin/products", json=body, timeout=30)
    assert made.status_code == 201, made.text
    product_id = str(made.json()["id"])
    deadline = time.monotonic() + 30
    while requests.get(f"{shop.base_url}/api/products/{product_id}", timeout=10).json().get("available") != stock:
        assert time.monotonic() < deadline, "the product's stock never showed up"
        time.sleep(0.1)
    return product_id


def buyers_with_carts(shop: System, filler: str) -> list[Buyer]:
    """Buyers who have been to the shop (a cart cookie: a buy-now retry is recognised by it)."""
    def one(i: int) -> Buyer:
        session, began = requests.Session(), time.monotonic()
        while True:  # as a shopper would: a 503 (the cart lane still recovering from the last fault) is tried again
            added = session.post(f"{shop.base_url}/api/cart/items", json={"product_id": filler, "quantity": 1},
                                 timeout=30)
            if added.status_code not in RETRY or time.monotonic() - began > GIVE_UP:
                break
            time.sleep(0.2)
        assert added.status_code == 200, added.text
        buyer = Buyer(session, f"fault-{random_sku()}-{i}", arrives=random.uniform(0.0, ARRIVALS))
        buyer.waited_to_start = time.monotonic() - began
        return buyer

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(BUYERS)))


def flash_sale(shop: System, product_id: str, buyers: list[Buyer], fault: Callable[[float], None]) -> SaleResult:
    """The buyers arrive over ARRIVALS s and buy one unit each; ``fault(started)`` runs beside them."""
    answers: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()
    for buyer in buyers:
        buyer.arrives += started

    def buy(buyer: Buyer) -> None:
        time.sleep(max(0.0, buyer.arrives - time.monotonic()))
        body = {"items": [{"product_id": product_id, "quantity": 1}]}
        while time.monotonic() - buyer.arrives < GIVE_UP:
            buyer.tries += 1
            try:
                answer = buyer.session.post(f"{shop.base_url}/api/checkout", json=body, timeout=15,
                                            headers={"Idempotency-Key": buyer.key})
            except requests.RequestException as exc:
                buyer.refused.append(type(exc).__name__)
                time.sleep(0.2)
                continue
            if answer.status_code == 201:
                buyer.order_id = answer.json()["order_id"]
            elif answer.status_code == 409 and answer.json().get("error", {}).get("code") == "out_of_stock":
                buyer.sold_out = True
            elif answer.status_code in RETRY:
                buyer.refused.append(f"{answer.status_code} {answer.text[:120]}")
                time.sleep(0.2)
                continue
            else:  # anything else is a wrong answer: a 500 says the shop broke, not that it is busy
                buyer.wrong = f"{answer.status_code} {answer.text[:200]}"
            if buyer.wrong is None:
                buyer.answered_at = time.monotonic()
                with lock:
                    answers.append(buyer.answered_at)
            return

    failed: list[BaseException] = []

    def faulting_thread() -> None:
        try:
            fault(started)
        except BaseException as exc:  # the sale's checks would pass without the fault: say it did not happen
            failed.append(exc)

    faulting = threading.Thread(target=faulting_thread, name="fault")
    faulting.start()
    try:
        with ThreadPoolExecutor(len(buyers)) as pool:
            list(pool.map(buy, buyers))
    finally:
        faulting.join()
    if failed:
        raise AssertionError(f"the fault did not happen: {failed[0]!r}") from failed[0]
    return SaleResult(buyers, answers, started)


def orders_holding(shop: System, product_id: str) -> int:
    """Orders that hold units of ``product_id``, from the admin's order list."""
    session, held = admin(shop), 0
    for status in HOLDS_STOCK:
        cursor = None
        while True:
            page = session.get(f"{shop.base_url}/api/admin/orders", timeout=30,
                               params={"status": status, "limit": 100, **({"cursor": cursor} if cursor else {})}).json()
            held += sum(any(line["product_id"] == product_id for line in o["lines"]) for o in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return held


def check_the_sale(shop: System, product_id: str, sale: SaleResult, fault: str) -> dict[str, Any]:
    wrong = [b.wrong for b in sale.buyers if b.wrong]
    assert not wrong, f"{len(wrong)} buyers got a wrong answer, such as {wrong[0]}"
    unanswered = [b for b in sale.buyers if b.answered_at is None]
    assert not unanswered, f"{len(unanswered)} buyers never answered: {[b.refused[-3:] for b in unanswered][:3]}"
    wait_all_up(shop)  # what the fault killed is back (the admin's reads below need inventory)
    orders = {b.order_id for b in sale.buyers if b.order_id}
    assert len(orders) == sum(1 for b in sale.buyers if b.order_id), "two buyers got the same order"
    assert len(orders) == STOCK, f"{len(orders)} orders for {STOCK} units"
    assert sum(b.sold_out for b in sale.buyers) == BUYERS - STOCK
    level = admin(shop).get(f"{shop.base_url}/api/admin/inventory/{product_id}", timeout=30).json()
    assert (level["on_hand"], level["reserved"], level["available"]) == (STOCK, STOCK, 0), level
    deadline = time.monotonic() + 30
    while (held := orders_holding(shop, product_id)) != STOCK and time.monotonic() < deadline:
        time.sleep(0.5)  # an order's status follows its reservation by an event
    assert held == STOCK, f"{held} orders hold units of the product, for {STOCK} units"
    figures = {"fault": fault, "database": "postgresql" if shop.postgres else "sqlite",
               "nats_servers": len(shop.nats_nodes),
               "buyers": BUYERS, "stock": STOCK, "orders": len(orders),
               "retried_buyers": sum(1 for b in sale.buyers if b.refused),
               "retries": sum(len(b.refused) for b in sale.buyers),
               "retried_for": dict(Counter(r[:90] for b in sale.buyers for r in b.refused).most_common(4)),
               "longest_unanswered_s": round(sale.longest_unanswered(), 2),
               "slowest_cart_add_before_s": round(max(b.waited_to_start for b in sale.buyers), 2),
               "slowest_buyer_s": round(max((b.answered_at or 0) - b.arrives for b in sale.buyers), 2)}
    print(f"\nfault figures: {json.dumps(figures)}")
    return figures


# ------------------------------------------------------------------------------------------ where things are


def nats_call(shop: System, work: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        nc = await nats.connect(shop.settings.nats_servers, **natsauth.connect_options(shop.settings, natsauth.ADMIN))
        try:
            return await work(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


def stream_leader(shop: System) -> str:
    async def leader(nc: Any) -> str:
        info = await nc.jetstream().stream_info(subjects.lane_stream(INVENTORY.name))
        assert info.cluster is not None and info.cluster.leader, f"the lane's stream has no leader: {info.cluster}"
        return str(info.cluster.leader)

    return str(nats_call(shop, leader))


def owner_pid(shop: System, product_id: str) -> int:
    partition = partition_of(product_id, INVENTORY.partitions)

    async def holder(nc: Any) -> str:
        kv = await nc.jetstream().key_value(subjects.lane_bucket(INVENTORY.name))
        return (await kv.get(f"lease.{partition}")).value.decode()

    return int(str(nats_call(shop, holder)).split("-")[-2])


def wait_all_up(shop: System, timeout: float = 60.0) -> None:
    """Every child alive again (the supervisor restarted what a fault killed) before the next scenario."""
    deadline = time.monotonic() + timeout
    while not all(child.alive for child in shop.children.all.values()):
        assert time.monotonic() < deadline, f"not every process came back: {shop.unexpected_exits}"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ the scenarios


def at(started: float, seconds: float) -> None:
    time.sleep(max(0.0, started + seconds - time.monotonic()))


Fault = Callable[[float], None]


def kill_the_stream_leader(shop: System, postgres: OwnPostgres | None, product_id: str) -> Fault:
    def fault(started: float) -> None:
        at(started, 2.0)
        node = f"nats-server-{stream_leader(shop).removeprefix('cartwheel-')}"
        process = shop.nats_nodes[node].process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)  # the supervisor starts it again a second later

    return fault


def kill_the_nats_server(shop: System, postgres: OwnPostgres | None, product_id: str) -> Fault:
    def fault(started: float) -> None:
        at(started, 2.0)
        assert shop.nats is not None and shop.nats.process is not None
        os.kill(shop.nats.process.pid, signal.SIGKILL)  # its streams are on disk; the supervisor starts it again

    return fault


def restart_postgresql(shop: System, postgres: OwnPostgres | None, product_id: str) -> Fault:
    assert postgres is not None

    def fault(started: float) -> None:
        at(started, 2.0)
        postgres.stop("immediate")  # as a crash: no checkpoint, every connection cut
        time.sleep(2.0)
        postgres.start()

    return fault


def stop_the_owner(shop: System, postgres: OwnPostgres | None, product_id: str) -> Fault:
    def fault(started: float) -> None:
        at(started, 2.0)
        pid = owner_pid(shop, product_id)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(5.0)  # the lease lasts 3 s: another replica takes the partition meanwhile
        finally:
            os.kill(pid, signal.SIGCONT)

    return fault


def kill_the_owner(shop: System, postgres: OwnPostgres | None, product_id: str) -> Fault:
    def fault(started: float) -> None:
        at(started, 2.0)
        os.kill(owner_pid(shop, product_id), signal.SIGKILL)

    return fault


def kill_a_replica_every_second(shop: System, postgres: OwnPostgres | None, product_id: str) -> Fault:
    def fault(started: float) -> None:
        for second in range(1, int(ARRIVALS) + 3):
            at(started, float(second))
            alive = [shop.children.all[name] for name in shop.replicas["inventory"] if shop.children.all[name].alive]
            if alive:
                os.kill(random.choice(alive).process.pid, signal.SIGKILL)  # the supervisor restarts them

    return fault


FAULTS: dict[str, Callable[[System, OwnPostgres | None, str], Fault]] = {
    "nats_leader_killed": kill_the_stream_leader,  # (a)
    "nats_server_killed": kill_the_nats_server,  # the one server of a shop without a cluster
    "postgresql_restarted": restart_postgresql,  # (b)
    "owner_sigstopped": stop_the_owner,  # (c)
    "owner_killed": kill_the_owner,  # the failover target: a hot key's owner SIGKILLed
    "replica_killed_every_second": kill_a_replica_every_second,  # (d)
}


def sale_under(shop: System, postgres: OwnPostgres | None, name: str) -> dict[str, Any]:
    """One flash sale while fault ``name`` happens; AssertionError unless it sold exactly right. Its figures."""
    wait_all_up(shop)
    filler, product_id = new_product(shop, 10_000), new_product(shop, STOCK)
    buyers = buyers_with_carts(shop, filler)
    restarts = sum(child.restarts for child in shop.children.all.values())
    sale = flash_sale(shop, product_id, buyers, FAULTS[name](shop, postgres, product_id))
    if name in KILLS:  # what it killed was started again by the supervisor (and so was really killed)
        wait_all_up(shop)
        assert sum(child.restarts for child in shop.children.all.values()) > restarts
    return check_the_sale(shop, product_id, sale, name)


KILLS = {"nats_leader_killed", "nats_server_killed", "owner_killed", "replica_killed_every_second"}
SHOPS = {"nats_server_killed": ["one-nats-server"], "postgresql_restarted": ["postgresql"]}
"""The shops a fault applies to (the rest: both clusters)."""


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_flash_sale_sells_exactly_its_stock_through_a_fault(
    request: pytest.FixtureRequest, shop: System, fault: str
) -> None:
    """(The combinations of shop and fault that don't apply are deselected by ``conftest.py``.)"""
    sale_under(shop, request.getfixturevalue("postgres") if shop.postgres else None, fault)


def applies(shop: str, fault: str) -> bool:
    return shop in SHOPS.get(fault, ["postgresql", "sqlite"])
