"""Prebuilt Core statements run the cheap way: through SQLAlchemy's connection, or on SQLite through the driver.

A lane's part for one tenant is a transaction of a dozen small statements. Through a session and SQLAlchemy's
execution layer one add to a cart cost 1.1 ms of CPU, on the driver 0.42 ms (``bench/lane_parts.py``): with 100
busy tenants, every add paid that once, where one shop's batch shares it among dozens.
:class:`SqliteStatements` runs the same statements, compiled once by SQLAlchemy for SQLite, on the driver's
connection, with the columns' own bind and result processors: what is stored is what SQLAlchemy would store.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Executable, Select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

Params = Mapping[str, Any]
T = TypeVar("T")


class Statements(Protocol):
    """Where a transaction's prebuilt statements run."""

    dialect: str

    def rows(self, stmt: Executable, params: Params) -> list[tuple[Any, ...]]:
        """A SELECT's rows, its values as the columns' types read them."""

    def run(self, stmt: Executable, params: Params | Sequence[Params]) -> None:
        """A write; a list of parameter sets runs it once per set (one executemany)."""

    def changed(self, stmt: Executable, params: Params) -> int:
        """A write of one parameter set: how many rows it changed (an UPDATE's fence)."""


class CoreStatements:
    """Through a session's connection: any database SQLAlchemy knows."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.connection: Connection = session.connection()
        self.dialect = self.connection.dialect.name

    def rows(self, stmt: Executable, params: Params) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.connection.execute(stmt, params)]

    def run(self, stmt: Executable, params: Params | Sequence[Params]) -> None:
        self.connection.execute(stmt, params)  # type: ignore[arg-type]

    def changed(self, stmt: Executable, params: Params) -> int:
        return self.connection.execute(stmt, params).rowcount  # type: ignore[attr-defined,no-any-return]


def statements_of(where: Session | Statements) -> Statements:
    return CoreStatements(where) if isinstance(where, Session) else where


_DIALECT = sqlite.dialect()
_EXPANDING = re.compile(r"\(__\[POSTCOMPILE_(\w+)\]\)")


class _Compiled:
    """One statement compiled for SQLite: its SQL with each expanding IN left open, its parameters in order."""

    def __init__(self, stmt: Executable, keys: Sequence[str] | None) -> None:
        compiled = stmt.compile(dialect=_DIALECT, column_keys=list(keys) if keys is not None else None)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {stmt!r}")
        if any(getattr(compiled, what, None) for what in ("insert_prefetch", "update_prefetch", "postfetch",
                                                          "returning")):
            # Column defaults SQLAlchemy would compute, or values it would fetch back: not done on the driver.
            raise ValueError(f"give every column of this statement: {compiled.string[:80]!r}")
        self.sql = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.expanding = {name for name, b in compiled.binds.items() if b.expanding}
        self.given = {name: b.value for name, b in compiled.binds.items() if not b.required}  # e.g. OFFSET 0
        self.process = {}
        for name in self.names:
            kind = compiled.binds[name].type
            processor = kind.dialect_impl(_DIALECT).bind_processor(_DIALECT)
            if processor is not None:
                if name in self.expanding:
                    raise ValueError(f"{name}: an expanding parameter with a type to process")
                self.process[name] = processor
        self.results = [c.type.dialect_impl(_DIALECT).result_processor(_DIALECT, None)
                        for c in stmt.selected_columns] if isinstance(stmt, Select) else None
        self._sized: dict[tuple[int, ...], str] = {}

    def sql_for(self, params: Params) -> tuple[str, list[Any]]:
        values: list[Any] = []
        sizes: list[int] = []
        for name in self.names:
            value = params[name] if name in params or name not in self.given else self.given[name]
            if name in self.expanding:
                values.extend(value)
                sizes.append(len(value))
            else:
                processor = self.process.get(name)
                values.append(processor(value) if processor is not None else value)
        if not sizes:
            return self.sql, values
        sql = self._sized.get(key := tuple(sizes))
        if sql is None:
            if len(self._sized) >= SIZES_KEPT:
                self._sized.clear()
            counts = iter(sizes)
            sql = self._sized[key] = _EXPANDING.sub(lambda _: "(" + ", ".join("?" * next(counts)) + ")", self.sql)
        return sql, values


SIZES_KEPT = 64
"""IN-list sizes whose SQL a statement keeps rendered (a lane's part has lists of one or two)."""
_COMPILED: dict[tuple[int, tuple[str, ...] | None], _Compiled] = {}


def _compiled(stmt: Executable, keys: Sequence[str] | None = None) -> _Compiled:
    """Compiled once per statement and set of parameter names, and kept: give module constants only (as the lanes'
    and the outbox's statements are), never a statement built per call."""
    found = _COMPILED.get(cache_key := (id(stmt), tuple(keys) if keys is not None else None))
    if found is None:
        found = _COMPILED[cache_key] = _Compiled(stmt, keys)
        found.stmt = stmt  # type: ignore[attr-defined]  # kept alive: its id is the key
    return found


class SqliteStatements:
    """On the driver's connection of a SQLite file, inside a transaction the caller began. A driver error is
    raised as SQLAlchemy raises it (``OperationalError`` with the driver's error as ``orig``), so callers that
    tell a locked file from a bug do so the same way."""

    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def rows(self, stmt: Executable, params: Params) -> list[tuple[Any, ...]]:
        compiled = _compiled(stmt)
        if compiled.results is None:
            raise TypeError("rows() reads a SELECT's rows: run() the others")
        sql, values = compiled.sql_for(params)
        found = self.execute(sql, values).fetchall()
        if any(compiled.results):
            processors = compiled.results
            return [tuple(p(v) if p is not None else v for p, v in zip(processors, row, strict=True))
                    for row in found]
        return found

    def run(self, stmt: Executable, params: Params | Sequence[Params]) -> None:
        """As SQLAlchemy runs it: an INSERT's columns are the parameters' names (those of the first row)."""
        if isinstance(params, Mapping):
            sql, values = _compiled(stmt, list(params)).sql_for(params)
            self.execute(sql, values)
            return
        if not params:
            return
        names = list(params[0])
        if any(p.keys() != params[0].keys() for p in params):
            raise ValueError(f"an executemany whose rows have other names than the first's ({names})")
        compiled = _compiled(stmt, names)
        rendered = [compiled.sql_for(p) for p in params]
        sql = rendered[0][0]
        if any(s != sql for s, _ in rendered):
            raise ValueError("an executemany whose rows render different SQL (IN lists of other sizes)")
        self.execute(sql, [values for _, values in rendered], many=True)

    def changed(self, stmt: Executable, params: Params) -> int:
        sql, values = _compiled(stmt, list(params)).sql_for(params)
        return self.execute(sql, values).rowcount

    def execute(self, sql: str, values: Any, many: bool = False) -> sqlite3.Cursor:
        try:
            return self.connection.executemany(sql, values) if many else self.connection.execute(sql, values)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc


def read_file(path: Path, work: Callable[[Statements], T]) -> T:
    """Read-only ``work`` (``query_only``, one read transaction) on the SQLite file at ``path``, on a connection of
    its own, closed after: a look at a tenant's database that is not open here (a quiet tenant's upkeep) without
    opening it, its engine, pools and relay. The file must exist (``mode=rw``: one deleted meanwhile is not made
    again); a writer holding it makes this wait 2 s at most. Raises SQLAlchemy's error of SQLite's (a table of an
    older schema, a file still being made): the caller then opens the database, which tells."""
    uri = f"file:{quote(str(path))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=2, isolation_level=None)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(uri, (), exc, sqlite3.Error) from exc
    with contextlib.closing(conn):
        statements = SqliteStatements(conn)
        statements.execute("PRAGMA query_only=1", ())
        statements.execute("BEGIN", ())  # one snapshot for all of ``work``'s reads, as a session's
        try:
            return work(statements)
        finally:
            conn.rollback()
