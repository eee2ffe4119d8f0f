"""The CPU an idle shop spends with many tenants registered: each process's, in cores, over ``--duration`` s.

With a database per tenant every service does upkeep for every registered tenant (its outbox, the orders sweeper):
an idle shop's cost grows with the tenants registered, and takes from what the busy ones get. The shop starts the
way `cartwheel up` does (SQLite, one nats-server, the embedded payment server), with ``--tenants`` registered by
``cartwheel tenants create --file``; after ``--settle`` s it is measured for ``--duration`` s with no traffic.
One JSON line. Not part of the test run.

    python bench/tenants_idle.py
    python bench/tenants_idle.py --tenants 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _load import CpuMeter
from cart import roles
from tenants_http import register, shop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after start before measuring")
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    var_dir = Path(tempfile.mkdtemp(prefix="cartwheel-bench-idle-"))
    try:
        _, seconds = register(var_dir, args.tenants)
        with shop(var_dir, workers=2) as system:
            time.sleep(args.settle)
            cpu = CpuMeter(roles(system))
            cpu.start()
            time.sleep(args.duration)
            cores = cpu.stop()
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)
    services = sum(v for k, v in cores.items() if k not in ("client", "host"))
    print(json.dumps({"bench": "tenants_idle", "tenants_registered": args.tenants, "create_and_migrate_s":
                      round(seconds, 1), "settle_s": args.settle, "duration_s": args.duration,
                      "cpu_cores": cores, "shop_cores": round(services, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
