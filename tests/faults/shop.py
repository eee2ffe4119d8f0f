"""The shop the fault tests break: `cartwheel up --cluster` (or one nats-server) on a PostgreSQL server of its own,
and where its processes are (the stream's leader, a partition's owner)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats

from cartwheel import natsauth, subjects
from cartwheel.lanes import partition_of
from cartwheel.natsserver import free_port, port_is_free
from cartwheel.settings import Settings
from cartwheel.supervisor import System
from services.inventory.domain import LANE as INVENTORY

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


def free_nats_ports() -> int:
    """The first of three free ports in a row (the cluster's client ports)."""
    for _ in range(50):
        first = free_port()
        if all(port_is_free(first + i) for i in (1, 2)):
            return first
    raise RuntimeError("no three free ports in a row")



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


