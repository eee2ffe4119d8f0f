"""Storage platform: one engine per service, transactions off the event loop, Alembic per service."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    DateTime,
    Dialect,
    Engine,
    Executable,
    MetaData,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from cartwheel.files import create_private, private_dir
from cartwheel.statements import CoreStatements, SqliteStatements, Statements

log = logging.getLogger(__name__)
T = TypeVar("T")
Item = TypeVar("Item")
W = TypeVar("W")
Batch = Callable[[Session, list[Item]], list[T]]
"""Writes many items of one kind in the caller's transaction; one outcome per item, in order."""

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class PlatformBase(DeclarativeBase):
    """Tables every service database has (outbox, processed events); see :mod:`cartwheel.outbox`."""

    metadata = MetaData(naming_convention=NAMING)


def service_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING)


READ_ONLY = "cartwheel_read_only"
BUSY_MS = "cartwheel_busy_ms"  # SQLite: how long a transaction's BEGIN waits for another process's writer
SQLITE_BUSY_MS = 30_000
QUICK_BUSY_MS = 20  # ... when it runs on the event loop, which must not stand still behind a lock held for long


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    in_file = _in_file(parsed)
    if in_file:
        private_dir(Path(parsed.database).parent)
        create_private(Path(parsed.database))  # emails and password hashes: the owner's alone
    # Room for every reader thread, the writer, a lane applying on the loop, lookups and pings at once:
    # an overflow connection is closed on return and the next one runs the pragmas again.
    sizes = {"pool_size": pool_size + 5, "max_overflow": pool_size} if in_file else {}
    # The connection used last comes back first (``pool_use_lifo``): each connection keeps its own page cache,
    # valid only while no other connection wrote the file. Handed out in turn, every write began on a cache
    # another had made stale and read its pages again.
    engine = create_engine(url, connect_args={"timeout": 30}, **({"pool_use_lifo": True, **sizes} if sizes else {}))

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" hook below issue BEGIN
        cursor = dbapi_conn.cursor()
        _enter_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later writes fails
        # with SQLITE_BUSY at once when another process (a second replica) holds the lock.
        # Readers stay deferred, so in WAL mode they run beside the writer.
        options = conn.get_execution_options()
        busy = options.get(BUSY_MS, SQLITE_BUSY_MS)
        if conn.info.get(BUSY_MS, SQLITE_BUSY_MS) != busy:  # the pragma stays with the pooled connection
            conn.exec_driver_sql(f"PRAGMA busy_timeout={busy}")
            conn.info[BUSY_MS] = busy
        conn.exec_driver_sql("BEGIN" if options.get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


SQLITE_LOCK_WAIT_SECONDS = 30.0


def _enter_wal(cursor: Any) -> None:
    """Switch a database file to WAL, waiting for other first openers instead of failing.

    WAL is a property of the file, so once any opener switched it the check is a read. The switch
    itself needs the file to itself, and SQLite answers "database is locked" at once, without its
    busy handler, while another process is opening or switching the same new file.
    """
    deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
    delay = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _in_file(url: URL) -> bool:
    """A SQLite URL names a file (not the in-memory database, whose one connection is the database)."""
    return bool(url.database) and url.database != ":memory:"


def _locked(error: OperationalError) -> bool:
    """SQLite said another connection holds the lock (a try on the event loop then waits for it on a thread)."""
    return "locked" in str(error.orig) or "busy" in str(error.orig)


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database can't be reached or used right now (down, restarting, a connection cut,
    a locked SQLite file, a pool with no connection free): worth answering 503 and asking again, not a bug."""
    if isinstance(error, PoolTimeout):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError) and isinstance(error.orig, sqlite3.Error):
        # SQLite says "OperationalError" of a syntax error or a missing table too: those are bugs, not outages.
        return str(getattr(error.orig, "sqlite_errorname", "")).startswith(_SQLITE_UNAVAILABLE)
    return isinstance(error, OperationalError)  # a server's: refused, cut, shutting down, in recovery


_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL",
                       "SQLITE_PROTOCOL")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@dataclass
class _Driver:
    """A thread's own SQLite connection for the driver's statements (:meth:`Database._driver`)."""

    generation: int
    """The count of the database's closes when it was opened: one from before a close is not used again."""
    statements: SqliteStatements
    release: Callable[[], None]
    """Closes it (an in-memory database's: back to its pool)."""
    busy_ms: int = SQLITE_BUSY_MS


class Database:
    """A service's database: sessions run in worker threads so handlers never block the event loop."""

    def __init__(self, url: str, *, pool_size: int = 10,
                 executors: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None) -> None:
        """``executors``: (readers, writer) shared with other databases of this process (many tenants' databases:
        threads of their own each would be hundreds); None: this database's own."""
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_local = is_sqlite(self.engine)
        """A file on this machine (SQLite), not a server at the other end of a connection."""
        self.wrote_at = 0.0  # monotonic time of the last write committed: while writes go through, no probe
        self._write_lock = threading.RLock() if self.is_local else None
        self._writer: contextlib.AbstractContextManager[Any] = self._write_lock or contextlib.nullcontext()
        self._queued: list[tuple[Batch[Any, Any], Any, asyncio.Future[Any]]] = []
        self._group_writer: asyncio.Task[None] | None = None
        self._lookup_connections = threading.local()
        self._opened_lookups: list[Connection] = []
        self._driver_connections = threading.local()
        self._opened_drivers: list[_Driver] = []
        self._drivers_closed = 0  # :meth:`close` counts up: a thread's driver connection from before is not used
        self._quick_sessions = sessionmaker(self.engine.execution_options(**{BUSY_MS: QUICK_BUSY_MS}),
                                            expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        self._owns_executors = executors is None
        if executors is not None:
            self._executor, self._write_executor = executors
            return
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="db")
        # SQLite has one writer at a time: one writing thread avoids lock contention in the process.
        self._write_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-write")
            if is_sqlite(self.engine)
            else self._executor
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        # SQLite: one writer at a time in this process, by a lock that wakes its waiter at once. Left to
        # SQLite, a second thread's BEGIN IMMEDIATE sleeps in its busy handler (1, 2, 5, 10 ms ...):
        # a lane applying on the event loop waited behind the outbox relay's writes that way.
        with self._writer, self.sessions.begin() as session:
            yield session
        self.wrote_at = time.monotonic()

    def run_sync(self, work: Callable[[Session], T]) -> T:
        with self.transaction() as session:
            return work(session)

    async def run_here(self, work: Callable[[Session], T]) -> T:
        """SQLite: run ``work`` on the calling thread (the event loop: no hand-off, no fight for the GIL) when the
        write lock is free now; when it is not, on the writing thread like :meth:`run`. A file write-locked for
        long by another process (a backup, an admin's shell) held the whole service's loop for up to 30 s: no
        health answers, no requests. Elsewhere the same as :meth:`run`."""
        return await self._run_here(self._quick_sessions.begin, work, lambda: self.run(work))

    async def run_statements(self, work: Callable[[Statements], T]) -> T:
        """``work`` in one write transaction, given the prebuilt statements' cheap path (:mod:`cartwheel.statements`):
        on SQLite the driver's connection, on the calling thread as :meth:`run_here` (on the writing thread while
        another process holds the file's lock); elsewhere a session's connection, as :meth:`run`."""
        if not self.is_local:
            return await self.run(lambda session: work(CoreStatements(session)))

        def elsewhere() -> Awaitable[T]:
            context = contextvars.copy_context()
            return asyncio.get_running_loop().run_in_executor(self._write_executor, context.run,
                                                              self.run_statements_sync, work)

        return await self._run_here(lambda: self._driver_transaction(QUICK_BUSY_MS), work, elsewhere)

    def run_statements_sync(self, work: Callable[[Statements], T]) -> T:
        """:meth:`run_statements` on the calling thread, waiting for the write lock (as :meth:`run_sync`)."""
        if not self.is_local:
            return self.run_sync(lambda session: work(CoreStatements(session)))
        with self._writer, self._driver_transaction(SQLITE_BUSY_MS) as statements:
            done = work(statements)
        self.wrote_at = time.monotonic()
        return done

    @contextmanager
    def _driver_transaction(self, busy_ms: int) -> Iterator[SqliteStatements]:
        """A write transaction on this thread's SQLite driver connection, begun as the engine's ``begin`` hook
        would. The caller holds the write lock (which :meth:`close` waits for before closing the connection)."""
        driver = self._driver(busy_ms)
        statements = driver.statements
        try:
            statements.execute("BEGIN IMMEDIATE", ())
            yield statements
            statements.execute("COMMIT", ())
        except BaseException:
            try:
                if statements.connection.in_transaction:
                    statements.connection.execute("ROLLBACK")
            except sqlite3.Error:  # broken: the next call opens another
                self._drop_driver(driver)
            raise

    def _driver(self, busy_ms: int) -> _Driver:
        """This thread's SQLite connection for the driver's statements, waiting ``busy_ms`` for a lock: kept for the
        thread (as :meth:`lookup` keeps its own), out of the pool (a checkout and the pool's reset on return took a
        tenth of the CPU of a tenant's part of a lane batch), closed by :meth:`close`."""
        driver: _Driver | None = getattr(self._driver_connections, "driver", None)
        if driver is None or driver.generation != self._drivers_closed:
            if driver is not None:  # from before a close that could not close it: this thread's, let go here
                self._drop_driver(driver)
            pooled = self.engine.raw_connection()  # opened as the pool opens one: the pragmas run
            connection: sqlite3.Connection = pooled.driver_connection  # type: ignore[assignment]
            release = pooled.close  # an in-memory database is its one connection: kept checked out
            if _in_file(self.engine.url):
                pooled.detach()  # this thread's from now on; the pool's room stays for its readers
                release = connection.close
            driver = _Driver(self._drivers_closed, SqliteStatements(connection), release)
            self._driver_connections.driver = driver
            self._opened_drivers.append(driver)
        if driver.busy_ms != busy_ms:
            driver.statements.execute(f"PRAGMA busy_timeout={busy_ms}", ())
            driver.busy_ms = busy_ms
        return driver

    def _drop_driver(self, driver: _Driver) -> None:
        if getattr(self._driver_connections, "driver", None) is driver:
            del self._driver_connections.driver
        with contextlib.suppress(ValueError):
            self._opened_drivers.remove(driver)
        with contextlib.suppress(Exception):
            driver.release()

    def _close_drivers(self) -> None:
        """Close the threads' driver connections once none is in use: a write holds the write lock from BEGIN to
        COMMIT, and a read takes it too (without waiting). While another thread holds it beyond a quick wait (a
        write waiting out another process's lock), its connection is left open: no thread uses one from before
        a close again, and each closes when its thread or this database lets go of it."""
        self._drivers_closed += 1
        if self._write_lock is None or not self._write_lock.acquire(timeout=QUICK_BUSY_MS / 1000):
            return
        try:
            for driver in [d for d in self._opened_drivers if d.generation < self._drivers_closed]:
                self._drop_driver(driver)
        finally:
            self._write_lock.release()

    async def _run_here(self, transaction: Callable[[], contextlib.AbstractContextManager[W]],
                        work: Callable[[W], T], elsewhere: Callable[[], Awaitable[T]]) -> T:
        if self._write_lock is None or not self._write_lock.acquire(timeout=QUICK_BUSY_MS / 1000):
            return await elsewhere()
        try:
            with transaction() as where:
                done = work(where)
            self.wrote_at = time.monotonic()
            return done
        except OperationalError as exc:
            if not _locked(exc):
                raise
        finally:
            self._write_lock.release()
        return await elsewhere()  # rolled back: another process holds the lock; wait for it off the loop

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in one transaction on a worker thread; commit if it returns."""
        # The caller's context goes along (run_in_executor takes none): log lines and outbox rows keep its trace.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._write_executor, context.run, self.run_sync, work)

    async def run_together(self, work: Callable[[Session], T]) -> T:
        """Like :meth:`run`, but writes asked for meanwhile share one transaction (group commit).

        While one group is being written, new writes queue; the next group takes them all. Each write
        runs in its own savepoint, so one that raises (a unique key taken) fails alone.
        """
        return await self.run_batched(_one_by_one, functools.partial(contextvars.copy_context().run, work))  # type: ignore[no-any-return]

    async def run_batched(self, batch: Batch[Item, T], item: Item) -> T:
        """Group commit of many writes of one kind: ``batch(session, items)`` writes them all at once.

        Items asked for while a group is being written wait for the next group, whose items of the
        same ``batch`` (the same function) go to one call: one multi-row insert per table instead of
        a few statements and a savepoint per write. ``batch`` returns one outcome per item, in
        order. If the call raises, its savepoint is rolled back and each item is written again
        alone (so ``batch`` must only write: it runs again), and one that raises fails alone.
        Within a group, kinds are written in the order each first arrived (all of a kind at once),
        so two writes of different kinds may commit in the other order than they were asked for.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._queued.append((batch, item, done))
        if self._group_writer is None:
            self._group_writer = loop.create_task(self._write_groups())
        try:
            return await done
        finally:  # a failed write's traceback holds this frame: holding its future too would be a cycle
            del done

    async def _write_groups(self) -> None:
        loop = asyncio.get_running_loop()
        group: list[tuple[Batch[Any, Any], Any, asyncio.Future[Any]]] = []
        try:
            while self._queued:
                group, self._queued = self._queued, []
                try:
                    asked = [(batch, item) for batch, item, _ in group]
                    outcomes = await loop.run_in_executor(self._write_executor, self._write_group, asked)
                except Exception as exc:  # the transaction itself failed: every write in it did
                    outcomes = [exc] * len(group)
                for (_, _, done), outcome in zip(group, outcomes, strict=True):
                    if done.done():  # its caller gave up waiting
                        continue
                    if isinstance(outcome, Exception):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
                group = []
        except BaseException:  # cancelled (the service is stopping): nobody may wait for an answer that won't come
            for _, _, done in (*group, *self._queued):
                done.cancel()
            self._queued = []
            raise
        finally:
            self._group_writer = None

    def _write_group(self, asked: list[tuple[Batch[Any, Any], Any]]) -> list[Any]:
        kinds: dict[Batch[Any, Any], list[int]] = {}
        for n, (batch, _) in enumerate(asked):
            kinds.setdefault(batch, []).append(n)
        outcomes: list[Any] = [None] * len(asked)
        with self.transaction() as session:
            if len(asked) == 1:  # alone: no savepoint needed, its failure is the transaction's
                batch, item = asked[0]
                return _written(batch, session, [item])
            for batch, positions in kinds.items():
                items = [asked[n][1] for n in positions]
                if batch is not _one_by_one and len(items) > 1:
                    try:
                        with session.begin_nested():
                            written = _written(batch, session, items)
                    except BatchMiscounted:
                        raise  # a bug, not a refused write: the whole group fails
                    except Exception:  # one of them, probably: each alone finds out which
                        pass
                    else:
                        for n, outcome in zip(positions, written, strict=True):
                            outcomes[n] = outcome
                        continue
                for n, item in zip(positions, items, strict=True):
                    try:
                        with session.begin_nested():
                            outcomes[n] = _written(batch, session, [item])[0]
                    except Exception as exc:
                        outcomes[n] = exc
        return outcomes

    def read_sync(self, work: Callable[[Session], T]) -> T:
        with self._read_sessions.begin() as session:
            return work(session)

    async def read(self, work: Callable[[Session], T]) -> T:
        """Run read-only ``work(session)``; on SQLite it does not wait for the write lock."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, self.read_sync, work)

    async def read_statements(self, work: Callable[[Statements], T]) -> T:
        """Read-only ``work`` with prebuilt statements (:mod:`cartwheel.statements`), each a read of its own. On a
        local SQLite file it runs right here on the driver, as :meth:`lookup` does; elsewhere on the read pool.
        An idle outbox relay's look, a session and a hop to the read pool each, cost every service 0.03 of a
        core with 100 tenants' databases open."""
        if self._write_lock is not None and self._write_lock.acquire(blocking=False):  # see _close_drivers
            try:
                return work(self._driver(QUICK_BUSY_MS).statements)  # a WAL reader meets a lock only in recovery
            except OperationalError as exc:
                if not _locked(exc):
                    raise
            finally:
                self._write_lock.release()
        return await self.read(lambda session: work(CoreStatements(session)))  # elsewhere, or locked: off the loop

    async def lookup(self, statement: Executable, **params: Any) -> Any:
        """The first column of the first row of a small indexed read (None if no row), for hot paths.

        On a local SQLite file it runs right here, on a connection kept for this thread: a WAL reader
        never waits for the writer, and a session plus a hop to the read pool cost a hundred times
        SQLite's own few microseconds. Elsewhere (a server at the other end) it goes to the read pool.
        """
        if not self.is_local:
            return await self.read(lambda session: session.execute(statement, params).scalar())
        conn = getattr(self._lookup_connections, "conn", None)
        if conn is None:
            conn = self.engine.execution_options(**{READ_ONLY: True}).connect()
            self._lookup_connections.conn = conn
            self._opened_lookups.append(conn)
        try:
            return conn.execute(statement, params).scalar()
        finally:
            conn.rollback()  # end the read transaction: an open one would hold back WAL checkpoints

    def write_probe(self, timeout: float = 1.0) -> str | None:
        """Why a write could not begin within ``timeout`` s (``None``: it could), writing nothing.

        ``SELECT 1`` said ok while another process held ``inventory.db``'s write lock and every restock waited
        5 s for a 503. SQLite: take the write lock (``BEGIN IMMEDIATE``) with a busy wait of ``timeout`` and
        let it go (beside this process's writers, not behind their lock: a probe must not stall them).
        PostgreSQL: a transaction id, which a read-only or recovering server refuses, under a statement
        timeout. The connection itself is bounded by the caller (the pool may wait for a server that does
        not answer).
        """
        ms = max(1, int(timeout * 1000))
        try:
            if self.is_local:
                raw = self.engine.raw_connection()  # the driver's own: no SQLAlchemy autobegin before the pragma
                try:
                    cursor = raw.cursor()
                    cursor.execute(f"PRAGMA busy_timeout={ms}")
                    try:
                        cursor.execute("BEGIN IMMEDIATE")  # the write lock, or SQLITE_BUSY after the wait
                        cursor.execute("ROLLBACK")
                    finally:
                        cursor.execute(f"PRAGMA busy_timeout={raw.info.get(BUSY_MS, SQLITE_BUSY_MS)}")
                finally:
                    raw.close()
            else:
                with self.engine.connect() as conn, conn.begin() as transaction:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                    conn.exec_driver_sql("SELECT txid_current()")
                    transaction.rollback()
        except Exception as exc:
            return f"a write could not begin: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return None

    def close(self) -> None:
        for conn in self._opened_lookups:
            with contextlib.suppress(Exception):
                conn.close()
        self._close_drivers()
        if self._owns_executors:
            self._write_executor.shutdown(wait=True)
            self._executor.shutdown(wait=True)
        self.engine.dispose()


# -- migrations ---------------------------------------------------------------------------

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "services"


CONTROL = "control"
"""The tenant registry's database (:mod:`cartwheel.tenants`), migrated like a service's."""


def alembic_config(service: str, connection: Connection | None = None) -> Config:
    cfg = Config()
    folder = Path(__file__).resolve().parent / "tenants" if service == CONTROL else MIGRATIONS_ROOT / service
    cfg.set_main_option("script_location", str(folder / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision(service: str) -> str:
    """The newest revision of ``service``'s Alembic history."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(service)).get_current_head()
    assert head is not None, f"{service} has no migrations"
    return head


def migrate(service: str, url: str, revision: str = "head") -> None:
    """Bring ``service``'s database to ``revision``; concurrent callers (replicas) wait their turn."""
    engine = make_engine(url, pool_size=1)
    try:
        # SQLite: BEGIN IMMEDIATE (see make_engine) already serialises migrators.
        with engine.begin() as conn:
            if not is_sqlite(engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(service.encode())})
            command.upgrade(alembic_config(service, conn), revision)
    finally:
        engine.dispose()


def make_postgres_database(url: str) -> None:
    """Create the database ``url`` names, unless it exists (asked of the server's ``postgres`` database)."""
    import psycopg
    from psycopg import sql

    target = make_url(url)
    if target.get_backend_name() != "postgresql":
        return
    with psycopg.connect(_server_admin(url), autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database or "")))


def drop_database(url: str) -> None:
    """Remove the database ``url`` names: a SQLite file (and its WAL), or a PostgreSQL database (its sessions cut)."""
    target = make_url(url)
    if target.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target.database}{suffix}").unlink(missing_ok=True)
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(_server_admin(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.database or "")))


def _server_admin(url: str) -> str:
    """A libpq address of the server's ``postgres`` database, as ``url``'s user: where databases are made."""
    return make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)


def run_migrations(*metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py``: online mode on the connection handed in."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `cartwheel migrate`, which hands Alembic a connection")
    context.configure(connection=connection, target_metadata=list(metadata), render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _one_by_one(session: Session, works: list[Callable[[Session], T]]) -> list[T]:
    """:meth:`Database.run_together`'s writes: each its own work, never batched with another."""
    return [work(session) for work in works]


class BatchMiscounted(RuntimeError):
    """A batch gave back a different number of outcomes than it was given items."""


def _written(batch: Batch[Any, T], session: Session, items: list[Any]) -> list[T]:
    """``batch``'s outcomes, one per item, checked before the savepoint or transaction around it ends."""
    outcomes = batch(session, items)
    if len(outcomes) != len(items):
        raise BatchMiscounted(f"{getattr(batch, '__qualname__', batch)} gave {len(outcomes)} outcomes "
                              f"for {len(items)} items")
    return outcomes
