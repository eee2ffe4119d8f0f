"""How long a lane's partitions go unowned when a replica leaves (SIGTERM) or crashes (SIGKILL).

Starts a nats-server of its own and three inventory replicas on one SQLite file (the test suite's
replica harness), then, twice for each signal: waits until the 16 partitions are dealt 6/5/5, sends
the signal to an owner of 5, measures until every partition is held again and none by the victim,
and starts a replacement. Prints one JSON line: partitions and seconds per kill. Not part of the test
run (``tests/integration/test_lanes.py`` checks the hand-over itself).

    python bench/lane_failover.py   # ~1 minute
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cartwheel.natsserver import NatsServer, free_port
from services.inventory.domain import LANE as INVENTORY
from tests.integration.test_lanes import Replicas


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cw-failover-"))
    figures: dict[str, list[dict[str, float]]] = {}
    try:
        with NatsServer(tmp / "nats", free_port()) as server:
            group = Replicas(server.url, f"sqlite:///{tmp}/inventory.db", tmp, module="services.inventory",
                             lane=INVENTORY.name, partitions=INVENTORY.partitions)
            try:
                group.start(3)
                for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
                    owners = group.wait_for(lambda o: sorted(Counter(o.values()).values()) == [5, 5, 6], "dealt 6/5/5")
                    victim, held = Counter(owners.values()).most_common()[-1]
                    pid = int(victim.split("-")[-2])
                    began = time.monotonic()
                    group.kill(pid, sig)
                    group.wait_for(lambda o, pid=pid: len(o) == INVENTORY.partitions and pid not in group.owner_pids(o),
                                   "taken over", timeout=20)
                    figures.setdefault(sig.name, []).append(
                        {"partitions": held, "seconds": round(time.monotonic() - began, 2)})
                    group.start(1)
            finally:
                group.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"bench": "lane_failover", "replicas": 3, "partitions": INVENTORY.partitions, **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
