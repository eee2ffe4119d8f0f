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

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cartwheel.supervisor import StartupError, System
from tests.faults.sale import ARRIVALS, STOCK, buyers_with_carts, check_the_sale, flash_sale, new_product
from tests.faults.shop import OwnPostgres, cluster_shop, own_postgres, owner_pid, stream_leader, wait_all_up

pytestmark = pytest.mark.faults


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
