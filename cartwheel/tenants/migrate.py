"""``cartwheel migrate --all-tenants``: every service's Alembic history on every tenant's databases.

N databases at a time (processes: a migration is Python work), a journal in the control database
(a rerun skips what is done at the current head and retries what failed), progress as it goes,
and a summary naming each failure. A tenant that fails never holds up the others. Ctrl-C stops it
after the migrations under way, with the summary (after a second one, those are not recorded: the rerun looks at
them again; a database's migration is one transaction); a rerun goes on.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TextIO

from sqlalchemy.engine import make_url

from cartwheel.db import head_revision, make_postgres_database, migrate
from cartwheel.interrupts import StopAsked, start_forkserver_with_sigint_blocked
from cartwheel.settings import DATABASES, Settings
from cartwheel.tenants.progress import Progress
from cartwheel.tenants.registry import Registry

STOP_LOOK_S = 0.2  # how often the pool's loop looks whether Ctrl-C asked it to stop


@dataclass(frozen=True)
class Job:
    tenant: str
    service: str
    url: str
    revision: str


@dataclass
class Plan:
    todo: list[Job]
    done: int  # already at the head, by the journal: skipped
    retrying: int  # failed last time: in todo again


@dataclass
class Outcome:
    migrated: int = 0
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0
    interrupted: int = 0  # stopped by Ctrl-C: how many were left for a rerun

    @property
    def failed_tenants(self) -> list[str]:
        return sorted({tenant for tenant, _ in self.failures})


def plan(settings: Settings, registry: Registry, *, tenants: Iterable[str] | None = None,
         services: Sequence[str] = DATABASES) -> Plan:
    """What to migrate: each (tenant, service) not recorded as done at the service's current head."""
    journal = registry.journal()
    names = list(tenants) if tenants is not None else [settings.tenant, *registry.names()]
    todo, done, retrying = [], 0, 0
    for tenant in names:
        for service in services:
            head = head_revision(service)
            row = journal.get((tenant, service))
            url = settings.database_url(service, tenant)
            if row is not None and row.status == "done" and row.revision == head and not _missing(url):
                done += 1
                continue
            retrying += row is not None and row.status == "failed"
            todo.append(Job(tenant, service, url, head))
    return Plan(todo, done, retrying)


def _missing(url: str) -> bool:
    """A SQLite database that is not there (deleted, or restored elsewhere) though the journal says done."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists()


def migrate_one(job: Job) -> str | None:
    """Bring one database to the head (making it first on PostgreSQL); None, or why it failed."""
    try:
        make_postgres_database(job.url)
        migrate(job.service, job.url, job.revision)
    except Exception as exc:  # the journal keeps it; the run goes on with the others
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"[:2000]
    return None


def run(registry: Registry, jobs: list[Job], *, parallel: int, out: TextIO = sys.stderr,
        work: Callable[[Job], str | None] = migrate_one) -> Outcome:
    """Migrate ``jobs``, ``parallel`` at a time, recording each in the journal as it ends."""
    outcome = Outcome()
    started = time.monotonic()
    with StopAsked() as stop, Progress(len(jobs), out) as progress:
        try:
            if parallel <= 1:
                for job in jobs:
                    if stop.asked:
                        break
                    _finish(registry, job, work(job), outcome, progress)
            else:
                pending = list(reversed(jobs))
                while pending and not stop.asked:  # a pool whose worker died (a crash, the OOM killer) is replaced
                    pending, suspects = _in_processes(registry, pending, parallel, work, outcome, progress, stop)
                    for job in suspects:  # each one in flight then, alone: the one that dies again is the cause
                        _, died = _in_processes(registry, [job], 1, work, outcome, progress, stop)
                        if died:
                            _finish(registry, job, "its migration process died (a crash, or out of memory)",
                                    outcome, progress)
        except KeyboardInterrupt:  # a second Ctrl-C: what ended is in the journal
            stop.asked = True
        if stop.asked:
            outcome.interrupted = len(jobs) - outcome.migrated - len(outcome.failures)
    outcome.seconds = time.monotonic() - started
    return outcome


def _in_processes(registry: Registry, pending: list[Job], parallel: int, work: Callable[[Job], str | None],
                  outcome: Outcome, progress: Progress, stop: StopAsked) -> tuple[list[Job], list[Job]]:
    """Run ``pending`` (taken from its end) in one pool, recording each; when a worker process dies (and the pool
    with it): what was not started yet, and the jobs in flight then (one of them killed it). Once a stop is asked,
    no job starts and the ones started end."""
    # forkserver: a fork of this process would copy the progress thread's locks mid-use. Ctrl-C reaches the workers
    # too (the terminal sends it to the process group), and only this process decides: each is born with SIGINT
    # blocked, then ignores it (a Ctrl-C held back meanwhile is dropped).
    start_forkserver_with_sigint_blocked()
    with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("forkserver"), initializer=signal.signal,
                             initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        waiting: dict[Future[str | None], Job] = {}
        try:
            while waiting or (pending and not stop.asked):
                while pending and len(waiting) < parallel * 4 and not stop.asked:  # a window: the journal keeps pace
                    job = pending.pop()
                    waiting[pool.submit(work, job)] = job
                ended, _ = wait(waiting, timeout=STOP_LOOK_S, return_when=FIRST_COMPLETED)
                if any(isinstance(future.exception(), BrokenProcessPool) for future in ended):
                    return pending, list(waiting.values())
                for future in ended:
                    job = waiting.pop(future)
                    error = future.exception()
                    _finish(registry, job, f"{type(error).__name__}: {error}" if error else future.result(), outcome,
                            progress)
                if stop.asked:
                    for future in [f for f in waiting if f.cancel()]:  # not started: left for a rerun
                        pending.append(waiting.pop(future))
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)  # a second Ctrl-C: the ones under way end, unrecorded
            raise
    return pending, []


def _finish(registry: Registry, job: Job, error: str | None, outcome: Outcome, progress: Progress) -> None:
    registry.record(job.tenant, job.service, job.revision, error)
    if error:
        outcome.failures[(job.tenant, job.service)] = error
    else:
        outcome.migrated += 1
    progress.step(failed=error is not None)


def summary(outcome: Outcome, skipped: int) -> str:
    lines = [f"migrated {outcome.migrated} tenant databases in {outcome.seconds:.1f} s "
             f"({outcome.migrated / outcome.seconds if outcome.seconds else 0:.0f}/s); {skipped} already done; "
             f"{len(outcome.failures)} failed"]
    for (tenant, service), error in sorted(outcome.failures.items()):
        lines.append(f"  FAILED {tenant} {service}: {error}")
    if outcome.interrupted:
        lines.append(f"interrupted: {outcome.interrupted} not migrated; run `cartwheel migrate --all-tenants` to "
                     "go on (it skips what is done)")
    elif outcome.failures:
        lines.append("fix the cause and run the same command again: it retries the failures and skips the rest")
    return "\n".join(lines)
