"""CPU of a tenant's part of a lane batch: one add to a cart applied alone in its tenant's SQLite file, marking
the tenant's events of its part before as published (what a relay hands the next transaction).

With a database per tenant, a lane batch touching k tenants is k transactions of a command or two each; one shop's
batch of dozens of commands pays its transaction once. This measures what one such part costs, through each way a
part can reach SQLite: a SQLAlchemy session (``Database.run_sync``) and the prebuilt statements on the driver's
own connection (``Database.run_statements_sync``, what the lanes use on SQLite). Parts go round ``--tenants``
files (every file warmed first: opened, its carts made); ``--repeat`` rounds, medians. One JSON line per way and
round, then a summary. Not part of the test run.

    python bench/lane_parts.py
    python bench/lane_parts.py --tenants 1 --parts 5000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cartwheel.contracts.cart import AddItem, ProductSnapshot
from cartwheel.db import Database, PlatformBase
from cartwheel.lanes import store
from cartwheel.lanes.models import LanesBase
from cartwheel.lanes.types import LaneCommand
from services.cart.domain import make_spec

CARTS_PER_TENANT = 10


class Tenants:
    """``count`` tenants' cart databases and the lane's view of each (its cursor, its cached states)."""

    def __init__(self, root: Path, count: int) -> None:
        self.spec = make_spec()
        self.dbs: list[Database] = []
        for i in range(count):
            db = Database(f"sqlite:///{root / f't{i}.db'}", pool_size=2)
            PlatformBase.metadata.create_all(db.engine)
            LanesBase.metadata.create_all(db.engine)
            self.dbs.append(db)
        self.sequence = [0] * count
        self.cached: list[dict[str, Any]] = [{} for _ in range(count)]
        self.published: list[list[str]] = [[] for _ in range(count)]
        """Each tenant's events of its last part: its relay published them from memory, and the next part marks
        their rows (as the lanes runtime hands a relay's marks to the next transaction)."""
        self.product = ProductSnapshot(product_id=str(uuid.uuid4()), sku="BENCH-1", name="Bench",
                                       unit_price_cents=1000, currency="EUR", active=True)

    def part(self, i: int, n: int) -> store.PartitionBatch:
        self.sequence[i] += 1
        cart = f"cart-{i}-{n % CARTS_PER_TENANT}"
        add = AddItem(id=str(uuid.uuid4()), tenant=f"t{i}", cart_id=cart, product=self.product, quantity=1,
                      available=1_000_000)
        command = LaneCommand(id=add.id, key=cart, kind=add.kind, body=add.model_dump(mode="json"),
                              sequence=self.sequence[i], issued_at=datetime.now(UTC))
        item = store.Incoming(command, "bench.reply", tenant=f"t{i}")
        cached = {cart: self.cached[i][cart]} if cart in self.cached[i] else {}
        return store.PartitionBatch(0, self.sequence[i] - 1, [item], cached, tenant=f"t{i}",
                                    published=self.published[i])

    def run(self, parts: int, way: str) -> dict[str, float]:
        started_cpu, started = time.process_time(), time.perf_counter()
        for n in range(parts):
            i = n % len(self.dbs)
            batch = self.part(i, n)
            db = self.dbs[i]
            run: Callable[..., list[store.BatchResult]] = db.run_sync if way == "session" else db.run_statements_sync
            result = run(lambda s, b=batch: store.apply_group(s, self.spec, [b]))[0]
            if not result.applied or not result.events:
                raise RuntimeError(f"part {n} of tenant {i} was not applied as an add: {result.replies}")
            self.cached[i].update(result.states)
            self.published[i] = [event.id for event, _ in result.events]
        return {"cpu_ms_per_part": round((time.process_time() - started_cpu) / parts * 1000, 4),
                "wall_ms_per_part": round((time.perf_counter() - started) / parts * 1000, 4)}

    def close(self) -> None:
        for db in self.dbs:
            db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--parts", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[dict[str, float]]] = {"session": [], "statements": []}
    for round_no in range(1, args.repeat + 1):
        for way in figures:
            root = Path(tempfile.mkdtemp(prefix="cartwheel-bench-parts-"))
            tenants = Tenants(root, args.tenants)
            try:
                tenants.run(args.tenants * CARTS_PER_TENANT, way)  # warm: every file open, every cart made
                measured = tenants.run(args.parts, way)
            finally:
                tenants.close()
                shutil.rmtree(root, ignore_errors=True)
            figures[way].append(measured)
            print(json.dumps({"bench": "lane_parts", "way": way, "round": round_no, "tenants": args.tenants,
                              "parts": args.parts, **measured}), flush=True)
    medians = {way: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for way, rows in figures.items()}
    print(json.dumps({"bench": "lane_parts", "summary": True, "rounds": args.repeat, "tenants": args.tenants,
                      "parts": args.parts, **medians,
                      "cpu_ratio": round(medians["statements"]["cpu_ms_per_part"]
                                         / medians["session"]["cpu_ms_per_part"], 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
