"""Prebuilt statements run through a session or, on SQLite, on the driver's own connection (cartwheel.statements):
the same rows stored, the same values read, the same errors, the same transaction (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cartwheel.db import Database, migrate
from cartwheel.lanes import store
from cartwheel.outbox import INSERT_EVENTS
from cartwheel.statements import Statements, statements_of

AT = datetime(2026, 12, 7, 10, 1, 2, 345678, tzinfo=UTC)


def alarm(alarm_id: str, due_at: datetime = AT) -> dict[str, Any]:
    return {"lane": "l", "alarm_id": alarm_id, "partition": 3, "key": "k", "due_at": due_at, "body": "{}"}


def stored(db: Database, table: str) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:  # as the database holds them, past every type's processing
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))]


@pytest.fixture
def db(database_url: str) -> Any:
    migrate("inventory", database_url)
    database = Database(database_url)
    yield database
    database.close()


def test_both_paths_store_and_read_the_same(db: Database) -> None:
    upsert = store._upsert_alarms(db.engine.dialect.name)

    def write(through: str) -> Any:
        def work(statements: Statements) -> list[tuple[Any, ...]]:
            statements.run(upsert, [alarm(f"{through}-1"), alarm(f"{through}-2")])  # an executemany
            statements.run(upsert, alarm(f"{through}-1", AT.replace(microsecond=0)))  # one set: moved
            statements.run(INSERT_EVENTS, [{"event_id": f"{through}-e", "subject": "s", "payload": "{}",
                                            "created_at": AT, "attempts": 0, "traceparent": None}])
            one = statements.rows(store._SELECT_DUE, {"lane": "l", "ids": [f"{through}-1"]})
            three = statements.rows(store._SELECT_DUE, {"lane": "l", "ids": [f"{through}-{i}" for i in (1, 2, 9)]})
            return sorted(one + three)
        return work

    read_through_session = db.run_sync(lambda s: write("a")(statements_of(s)))
    read_through_statements = db.run_statements_sync(write("b"))
    assert read_through_session == [("a-1", AT.replace(microsecond=0))] * 2 + [("a-2", AT)]
    assert [(i.replace("b", "a"), at) for i, at in read_through_statements] == read_through_session
    assert all(at.utcoffset() == timedelta(0) for _, at in read_through_statements)
    alarms = stored(db, "lane_alarms")
    assert [r[1:] for r in alarms if r[1].startswith("b")] == [
        (r[1].replace("a", "b", 1), *r[2:]) for r in alarms if r[1].startswith("a")]
    events = stored(db, "outbox")
    assert len(events) == 2 and events[0][2:] == events[1][2:]  # all but position and id alike


def test_a_failure_rolls_the_whole_transaction_back_with_sqlalchemys_error(db: Database) -> None:
    db.run_statements_sync(lambda s: s.run(store._INSERT_ALARMS, [alarm("taken")]))

    def work(statements: Statements) -> None:
        statements.run(store._INSERT_ALARMS, [alarm("first")])
        statements.run(store._INSERT_ALARMS, [alarm("taken")])  # its key is there

    with pytest.raises(IntegrityError):
        db.run_statements_sync(work)
    assert [r[1] for r in stored(db, "lane_alarms")] == ["taken"]  # "first" went with it
    db.run_statements_sync(lambda s: s.run(store._INSERT_ALARMS, [alarm("after")]))  # the connection is clean
    assert [r[1] for r in stored(db, "lane_alarms")] == ["after", "taken"]


def test_a_threads_driver_connection_is_kept_and_let_go_once_broken(tmp_path: Any) -> None:
    """SQLite: a thread's transactions share its driver connection (no pool checkout each); one closed under a
    transaction (as a failed disk leaves it) is let go, and the next transaction opens another."""
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    migrate("inventory", url)
    db = Database(url)
    try:
        first = db.run_statements_sync(lambda s: s.connection)  # type: ignore[attr-defined]
        assert db.run_statements_sync(lambda s: s.connection) is first  # type: ignore[attr-defined]

        def breaks(statements: Statements) -> None:
            statements.run(store._INSERT_ALARMS, [alarm("lost")])
            statements.connection.close()  # type: ignore[attr-defined]
            raise OSError("the disk went away")

        with pytest.raises(OSError, match="disk"):
            db.run_statements_sync(breaks)
        db.run_statements_sync(lambda s: s.run(store._INSERT_ALARMS, [alarm("after")]))
        assert [r[1] for r in stored(db, "lane_alarms")] == ["after"]
        assert db.run_statements_sync(lambda s: s.connection) is not first  # type: ignore[attr-defined]
    finally:
        db.close()


def test_closing_never_pulls_a_threads_connection_from_under_its_transaction(tmp_path: Any) -> None:
    """Review: :meth:`Database.close` (an LRU evicting a tenant's database, from any thread) closed every thread's
    kept driver connection, one in the middle of a write on the writing thread too; and a thread's next transaction
    then met a closed connection. A write under way keeps its connection and commits; every thread's next
    transaction opens a new one."""
    url = f"sqlite:///{tmp_path / 'closing.db'}"
    migrate("inventory", url)
    db = Database(url)
    inside, go_on = threading.Event(), threading.Event()

    def slow(statements: Statements) -> None:
        statements.run(store._INSERT_ALARMS, [alarm("during")])
        inside.set()
        assert go_on.wait(10)
        statements.run(store._INSERT_ALARMS, [alarm("during-2")])

    try:
        db.run_statements_sync(lambda s: s.run(store._INSERT_ALARMS, [alarm("before")]))  # this thread's kept
        writer = threading.Thread(target=db.run_statements_sync, args=(slow,))
        writer.start()
        assert inside.wait(10)
        db.close()  # the writer holds the write lock: its connection is left to it
        go_on.set()
        writer.join(10)
        db.run_statements_sync(lambda s: s.run(store._INSERT_ALARMS, [alarm("after")]))  # a new connection
        assert asyncio.run(db.read_statements(lambda s: s.rows(store._SELECT_DUE, {"lane": "l", "ids": ["after"]})))
        assert [r[1] for r in stored(db, "lane_alarms")] == ["after", "before", "during", "during-2"]
    finally:
        go_on.set()
        db.close()


def test_a_file_another_process_write_locks_is_waited_for_off_the_loop(tmp_path: Any) -> None:
    """On the loop, a write meets another connection's lock: it is rolled back and waits on the writing thread,
    while the loop goes on; once the lock is let go it commits."""
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    migrate("inventory", url)
    db = Database(url)
    locker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")  # an admin's sqlite3 shell, say
    release = threading.Timer(1.0, locker.rollback)

    async def main() -> tuple[int, Any]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        release.start()
        await db.run_statements(lambda s: s.run(store._INSERT_ALARMS, [alarm("late")]))
        ticker.cancel()
        return ticks, time.monotonic() - started

    try:
        ticks, waited = asyncio.run(main())
    finally:
        release.cancel()
        locker.close()
    assert waited >= 0.9 and ticks >= 10  # it waited for the lock, and the loop ran meanwhile
    assert [r[1] for r in stored(db, "lane_alarms")] == ["late"]
    db.close()


def test_a_read_of_prebuilt_statements_sees_committed_rows_with_a_limit(db: Database) -> None:
    """The outbox relay's look for what is left (LIMIT ? with the OFFSET SQLAlchemy binds itself)."""
    from cartwheel.outbox import _PENDING

    db.run_statements_sync(lambda s: s.run(INSERT_EVENTS, [
        {"event_id": f"e{i}", "subject": "s", "payload": "{}", "created_at": AT, "attempts": 0, "traceparent": None}
        for i in range(3)]))
    found = asyncio.run(db.read_statements(lambda s: s.rows(_PENDING, {"limit": 2})))
    assert [event_id for _, event_id, *_ in found] == ["e0", "e1"]


def test_the_driver_path_refuses_what_it_would_store_otherwise_than_sqlalchemy(db: Database) -> None:
    """Review: a column left to its Python default was stored NULL by the driver path (SQLAlchemy fills it)."""
    from sqlalchemy import select

    from cartwheel.outbox import OutboxEvent

    row = {"event_id": "e", "subject": "s", "payload": "{}", "created_at": AT, "attempts": 0, "traceparent": None}
    short = {k: v for k, v in row.items() if k not in ("created_at", "attempts")}
    if db.is_local:
        with pytest.raises(ValueError, match="give every column"):
            db.run_statements_sync(lambda s: s.run(INSERT_EVENTS, [short]))
        with pytest.raises(ValueError, match="other names"):
            db.run_statements_sync(lambda s: s.run(INSERT_EVENTS, [row, {**short, "event_id": "f"}]))
        with pytest.raises(TypeError, match="SELECT"):
            db.run_statements_sync(lambda s: s.rows(INSERT_EVENTS, row))
    db.run_statements_sync(lambda s: s.run(INSERT_EVENTS, row))  # one mapping: its own columns
    assert db.read_sync(lambda s: s.scalars(select(OutboxEvent.event_id)).all()) == ["e"]


def test_an_in_memory_database_still_opens() -> None:
    """Review: the pool's LIFO option was passed to SQLite's in-memory pool too, which refuses it."""
    memory = Database("sqlite://")
    assert memory.read_sync(lambda s: s.execute(text("SELECT 1")).scalar()) == 1
    memory.close()
