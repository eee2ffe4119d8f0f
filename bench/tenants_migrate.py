"""Many tenants created and migrated by one command, a failure in one of them, and the rerun that resumes.

Issue 17's targets: 1,000 tenants on SQLite, and 100 on PostgreSQL, created and migrated by one command
(``cartwheel tenants create --file``) on this machine; a failure injected into tenant 500 is reported and
resumed. Each round, on a fresh ``var/`` (and fresh databases on PostgreSQL):

1. the fault: tenant ``--fail-at``'s orders database already holds a table named ``orders`` (as a
   half-restored backup would), so its migration fails;
2. ``cartwheel tenants create --file tenants.txt`` (one command: registers every tenant and migrates each
   one's six databases, ``--parallel`` at once): its wall time, exit code, and whether its summary names
   the failing tenant and database;
3. the fault is removed, and ``cartwheel migrate --all-tenants`` (the same journal) retries only what failed:
   its wall time and what it migrated.

Medians of ``--rounds`` (3). One JSON line per backend. Not part of the test run.

    python bench/tenants_migrate.py                          # 1,000 on SQLite, 100 on PostgreSQL
    python bench/tenants_migrate.py --backend sqlite --tenants 200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("CARTWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATABASES_PER_TENANT = 6


def cartwheel(var_dir: Path, env: dict[str, str], *argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CARTWHEEL_")}
    environ |= {"CARTWHEEL_VAR_DIR": str(var_dir), "CARTWHEEL_NATS_URL": "nats://127.0.0.1:1", **env}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cartwheel.cli", *argv], cwd=ROOT, env=environ, text=True,
                          capture_output=True, timeout=3600)
    return done, time.monotonic() - started


def name(i: int) -> str:
    return f"t{i:04d}"


def one_round(backend: str, tenants: int, fail_at: int, parallel: int) -> dict[str, Any]:
    var_dir = Path(tempfile.mkdtemp(prefix="cartwheel-tenants-bench-"))
    env: dict[str, str] = {}
    prefix = f"cwb{uuid.uuid4().hex[:6]}"
    admin = make_url(POSTGRES).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    try:
        listing = var_dir / "tenants.txt"
        listing.write_text("".join(f"{name(i)} {name(i)}.shops.test\n" for i in range(1, tenants + 1)))
        broken = name(fail_at)
        if backend == "sqlite":
            folder = var_dir / "tenants" / broken
            folder.mkdir(parents=True)
            with sqlite3.connect(folder / "orders.db") as db:
                db.execute("CREATE TABLE orders (id TEXT)")
        else:
            template = make_url(POSTGRES).set(database=f"{prefix}_{{service}}__{{tenant}}")
            env["CARTWHEEL_TENANT_DATABASE_URL"] = (template.render_as_string(hide_password=False)
                                                    .replace("%7B", "{").replace("%7D", "}"))
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{prefix}_orders__{broken}"')
            broken_url = make_url(POSTGRES).set(drivername="postgresql", database=f"{prefix}_orders__{broken}")
            with psycopg.connect(broken_url.render_as_string(hide_password=False), autocommit=True) as conn:
                conn.execute("CREATE TABLE orders (id TEXT)")
        created, create_s = cartwheel(var_dir, env, "tenants", "create", "--file", str(listing),
                                      "--parallel", str(parallel))
        migrated = re.search(r"migrated (\d+) tenant databases", created.stdout)
        named = f"FAILED {broken} orders:" in created.stdout
        if backend == "sqlite":
            with sqlite3.connect(var_dir / "tenants" / broken / "orders.db") as db:
                db.execute("DROP TABLE orders")
        else:
            with psycopg.connect(broken_url.render_as_string(hide_password=False), autocommit=True) as conn:
                conn.execute("DROP TABLE orders")
        resumed, resume_s = cartwheel(var_dir, env, "migrate", "--all-tenants", "--parallel", str(parallel))
        plan = re.search(r"(\d+) tenant databases to migrate \((\d+) tenants; (\d+) failed before\), (\d+) already",
                         resumed.stdout)
        return {
            "create_exit": created.returncode, "create_s": round(create_s, 2),
            "migrated_at_create": int(migrated.group(1)) if migrated else None,
            "failure_named": named, "failures_reported": created.stdout.count("  FAILED "),
            "resume_exit": resumed.returncode, "resume_s": round(resume_s, 2),
            "resume_databases": int(plan.group(1)) if plan else None,
            "resume_skipped": int(plan.group(4)) if plan else None,
            "resume_tail": resumed.stdout.strip().splitlines()[-1:] if resumed.returncode else [],
        }
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)
        if backend == "postgresql":
            with psycopg.connect(admin, autocommit=True) as conn:
                for (db,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                          (f"{prefix}%",)).fetchall():
                    conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--tenants", type=int, help="default: 1,000 on SQLite, 100 on PostgreSQL")
    parser.add_argument("--fail-at", type=int, help="the tenant whose migration fails (default: the middle one)")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        tenants = args.tenants or (1000 if backend == "sqlite" else 100)
        fail_at = args.fail_at or tenants // 2
        rounds = [one_round(backend, tenants, fail_at, args.parallel) for _ in range(args.rounds)]
        median = {key: statistics.median(r[key] for r in rounds) for key in ("create_s", "resume_s")}
        databases = tenants * DATABASES_PER_TENANT
        print(json.dumps({
            "bench": "tenants_migrate", "backend": backend, "tenants": tenants, "databases": databases,
            "fail_at": name(fail_at), "parallel": args.parallel, "rounds": len(rounds),
            "create_and_migrate_s_median": median["create_s"],
            "databases_per_s": round(databases / median["create_s"], 1),
            "resume_s_median": median["resume_s"], "per_round": rounds, "cpus": os.cpu_count(),
        }), flush=True)


if __name__ == "__main__":
    main()
