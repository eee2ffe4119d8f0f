"""The lanes runtime's database work: one transaction per batch, and the queries around it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Executable, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from cartwheel.contracts.base import Reply, utcnow
from cartwheel.errors import DomainError
from cartwheel.lanes.models import (
    LaneAlarm,
    LaneCommandRecord,
    LaneCursor,
    LaneDeadLetter,
    LaneState,
    LaneTenantAlarm,
)
from cartwheel.lanes.types import ALARM, LaneCommand, LaneSpec, fired_alarm_id
from cartwheel.outbox import INSERT_EVENTS, event_rows, mark_published
from cartwheel.statements import CoreStatements, Statements, statements_of

log = logging.getLogger(__name__)

ALARM_RETRY = timedelta(seconds=60)
"""An alarm whose key's state does not read fires again this much later (once repaired, it applies)."""
ALARM_EARLY = timedelta(seconds=1)
"""How far before its due time, by the NATS server's clock, a firing may arrive and still apply. The replica that
fires alarms reads its own clock; one that runs fast (a stopped NTP, a VM resumed) would expire a reservation
while its buyer is paying. A firing earlier than this is skipped, not recorded, and fires again: its republish
(every 30 s) is dropped by the stream's 2-minute duplicate window, so such an alarm fires up to ~2.5 minutes after
its due time, never before."""


@dataclass(frozen=True)
class Incoming:
    """A command as read from the stream, with where its reply goes."""

    command: LaneCommand
    reply_to: str | None
    malformed: str | None = None
    """Why the lane can't read this command (not JSON, ...): it is answered so and never applied."""
    traceparent: str | None = None
    """The trace the command was sent in: the events it causes continue it."""
    tenant: str | None = None
    """Whose database it applies in; None: the installation's own tenant."""


@dataclass
class BatchResult:
    applied: bool
    """False when the partition's cursor had moved: another replica applied these; nothing was written."""
    last_sequence: int
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    duplicates: int = 0
    events: list[tuple[Any, str | None]] = field(default_factory=list)
    """The events the batch recorded in the outbox, with each one's trace: the relay publishes them from memory."""
    alarms_changed: bool = False
    earliest_alarm: datetime | None = None
    states: dict[str, BaseModel] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PartitionBatch:
    """One partition's ready commands, as its owner hands them to :func:`apply_group`."""

    partition: int
    expected: int
    """The cursor this owner last committed: the batch applies only if the database still says so."""
    batch: list[Incoming]
    cached: Mapping[str, BaseModel] = field(default_factory=dict)
    """States as this owner last committed them (never read again from the database)."""
    through: int = 0
    """The cursor moves at least this far: past commands of other tenants in between (maybe with ``batch`` empty)."""
    tenant: str | None = None
    """Another tenant's batch: the events its commands cause are that tenant's."""
    tenant_alarms: Mapping[str, datetime] = field(default_factory=dict)
    """The own tenant's batch: other tenants that set alarms in this partition (or may have: a part applied before
    a crash), from when; noted in ``lane_tenant_alarms`` with the cursor."""
    published: Sequence[str] = ()
    """Ids of events the database's outbox relay published from memory: this transaction marks their rows (see
    :meth:`cartwheel.outbox.OutboxRelay.take_marks`), whether or not the batch applies."""


_cursors = LaneCursor.__table__
_records = LaneCommandRecord.__table__
_states = LaneState.__table__
_alarms = LaneAlarm.__table__

# Statements built once: executing a prebuilt Core statement on the session's connection skips
# building the construct, its cache key and the ORM's execution path on every batch (all of which
# showed in the profile); expanding IN parameters keep one compiled form for any number of values.
_SELECT_CURSORS = (
    select(_cursors.c.partition, _cursors.c.last_sequence)
    .where(_cursors.c.lane == bindparam("lane"), _cursors.c.partition.in_(bindparam("ids", expanding=True)))
    .order_by(_cursors.c.partition)  # rows lock in one order: two owners' groups can't deadlock on PostgreSQL
    .with_for_update()
)
_SELECT_RECORDED = select(_records.c.command_id, _records.c.reply).where(
    _records.c.lane == bindparam("lane"), _records.c.command_id.in_(bindparam("ids", expanding=True)))
_SELECT_STATES = select(_states.c.key, _states.c.state).where(
    _states.c.lane == bindparam("lane"), _states.c.key.in_(bindparam("ids", expanding=True)))
_SELECT_DUE = select(_alarms.c.alarm_id, _alarms.c.due_at).where(
    _alarms.c.lane == bindparam("lane"), _alarms.c.alarm_id.in_(bindparam("ids", expanding=True)))
_INSERT_RECORDS = insert(_records)
_INSERT_ALARMS = insert(_alarms)
_DELETE_ALARMS = delete(_alarms).where(
    _alarms.c.lane == bindparam("lane"), _alarms.c.alarm_id.in_(bindparam("ids", expanding=True)))
_INSERT_STATES = insert(_states)
_DELETE_STATES = delete(_states).where(
    _states.c.lane == bindparam("lane"), _states.c.key.in_(bindparam("ids", expanding=True)))
_UPDATE_STATES = update(_states).where(
    _states.c.lane == bindparam("b_lane"), _states.c.key == bindparam("b_key"),
).values(state=bindparam("b_state"), updated_at=bindparam("b_at"))
_CLAIM_CURSOR = update(_cursors).where(
    _cursors.c.lane == bindparam("b_lane"), _cursors.c.partition == bindparam("b_partition"),
    _cursors.c.last_sequence == bindparam("b_expected"),
).values(last_sequence=bindparam("b_sequence"))
_INSERT_CURSORS = insert(_cursors)
_UPDATE_CURSORS = update(_cursors).where(
    _cursors.c.lane == bindparam("b_lane"), _cursors.c.partition == bindparam("b_partition"),
).values(last_sequence=bindparam("b_sequence"))
IN_CHUNK = 2000
"""Values per IN list: well under SQLite's 32,766 host parameters and PostgreSQL's 65,535."""


def _upsert_alarms(dialect: str) -> Executable | None:
    """``INSERT .. ON CONFLICT DO UPDATE`` for setting alarms: one statement where moving an alarm took
    a DELETE and an INSERT (every add to a cart moves its abandonment alarm). None: no such dialect."""
    if dialect not in _UPSERTS:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
        else:
            _UPSERTS[dialect] = None
            return None
        stmt = dialect_insert(_alarms)
        _UPSERTS[dialect] = stmt.on_conflict_do_update(
            index_elements=[_alarms.c.lane, _alarms.c.alarm_id],
            set_={name: stmt.excluded[name] for name in ("partition", "key", "due_at", "body")},
        )
    return _UPSERTS[dialect]


_UPSERTS: dict[str, Executable | None] = {}


def _upsert_tenant_alarms(dialect: str) -> Executable | None:
    """``INSERT .. ON CONFLICT`` keeping the earliest ``next_at``: a group notes every tenant it saw set alarms
    with one statement (a row read and written per tenant took a tenth of the cart service's loop with 100 busy
    tenants). None: no such dialect."""
    if dialect not in _TENANT_UPSERTS:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
            earliest = func.least
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
            earliest = func.min  # SQLite's min() of two arguments is the smaller
        else:
            _TENANT_UPSERTS[dialect] = None
            return None
        table = LaneTenantAlarm.__table__
        stmt = dialect_insert(table)
        _TENANT_UPSERTS[dialect] = stmt.on_conflict_do_update(
            index_elements=[table.c.lane, table.c.partition, table.c.tenant],
            set_={"next_at": earliest(table.c.next_at, stmt.excluded.next_at)},
        )
    return _TENANT_UPSERTS[dialect]


_TENANT_UPSERTS: dict[str, Executable | None] = {}


def _select_in(statements: Statements, stmt: Executable, lane: str, values: AbstractSet[str]) -> dict[Any, Any]:
    found: dict[Any, Any] = {}
    for chunk in _chunks(sorted(values), IN_CHUNK):
        found.update(statements.rows(stmt, {"lane": lane, "ids": chunk}))
    return found


def cursor(session: Session, lane: str, partition: int) -> int:
    row = session.get(LaneCursor, (lane, partition))
    return row.last_sequence if row else 0


def apply_batch(session: Session, spec: LaneSpec[Any], partition: int, expected: int,
                batch: list[Incoming], cached: Mapping[str, BaseModel] | None = None) -> BatchResult:
    """Apply one partition's ``batch``: :func:`apply_group` of one."""
    return apply_group(session, spec, [PartitionBatch(partition, expected, batch, cached or {})])[0]


def apply_group(where: Session | Statements, spec: LaneSpec[Any], batches: list[PartitionBatch]) -> list[BatchResult]:
    """Apply each partition's batch (in stream order) whose cursor is still at its ``expected``, in one transaction.

    Reads everything the batches need with one query per table, runs the handlers in memory,
    then writes with one statement per table: the cost per command stays that of its handler,
    however few commands each partition has. A partition whose cursor moved (another replica
    applied it) is left out, with nothing written for it; the others apply. Partitions of one
    lane share nothing but the command ids' table, so the handlers of one partition see the
    same states as if each batch had its own transaction; a command id met again in a later
    partition of the group is a duplicate, as it would be one transaction later.
    ``BatchResult.states`` are the states each batch changed, for its owner to keep. ``where``: a session, or
    the statements of a transaction begun for this (:meth:`cartwheel.db.Database.run_statements`: on SQLite, the
    driver's connection, on which a tenant's part of a command or two takes about a third of the CPU).
    """
    lane = spec.name
    conn = statements_of(where)
    mark_published(conn, [event_id for b in batches for event_id in b.published])
    claimed = _claim(conn, lane, batches)
    current = {batches[0].partition: batches[0].expected} if claimed else _select_in(
        conn, _SELECT_CURSORS, lane, {b.partition for b in batches})  # type: ignore[arg-type]
    results = [BatchResult(applied=False, last_sequence=current.get(b.partition, 0)) for b in batches]
    live: list[tuple[PartitionBatch, BatchResult]] = []
    seen: set[int] = set()
    for b, result in zip(batches, results, strict=True):
        wanted = b.batch or b.through > b.expected
        if wanted and current.get(b.partition, 0) == b.expected and b.partition not in seen:
            live.append((b, result))
        seen.add(b.partition)  # a partition twice (never by design): the first batch only
    if not live:
        return results

    commands = [i.command for b, _ in live for i in b.batch]
    readable = [i.command for b, _ in live for i in b.batch if i.malformed is None]
    recorded: dict[str, str] = _select_in(conn, _SELECT_RECORDED, lane, {c.id for c in commands})
    wanted = {i.command.key for b, _ in live for i in b.batch if i.malformed is None and i.command.key not in b.cached}
    stored: dict[str, str] = _select_in(conn, _SELECT_STATES, lane, wanted) if wanted else {}
    alarm_ids = {_alarm_id(c) for c in readable if c.kind == ALARM}
    due: dict[str, datetime] = _select_in(conn, _SELECT_DUE, lane, alarm_ids) if alarm_ids else {}

    now = utcnow()
    group: list[tuple[PartitionBatch, BatchResult, _Writes]] = []
    for b, result in live:
        keys = {i.command.key for i in b.batch if i.malformed is None}
        known = {k: b.cached[k] for k in keys & b.cached.keys()}
        unreadable = _parse_states(spec, {k: stored[k] for k in keys & stored.keys()}, known)
        writes = _Writes(spec, b.partition, known, due, b.tenant)  # its ``existing``: before handlers add keys
        for item in b.batch:
            command = item.command
            reply = recorded.get(command.id)
            if reply is not None:
                result.duplicates += 1
                if command.kind == ALARM and _still_set(command, due):  # set again for the time it fired at:
                    writes.cancel([_alarm_id(command)])  # that firing is done, or its row would stay due forever
            elif command.kind == ALARM and _early(command):
                log.warning("lane %s: alarm %s fired at %s, before its due time %s by the server's clock; skipped "
                            "(is the firing replica's clock fast?)", lane, _alarm_id(command),
                            command.issued_at.isoformat(), command.body.get("due_at"))
                reply = _success({"skipped": "alarm is not due yet"})  # not recorded: it fires again when due
            else:
                if item.malformed is not None:
                    log.error("lane %s: command %s at sequence %d is malformed (%s); answered so, not applied",
                              lane, command.id, command.sequence, item.malformed)
                    reply = _failure({"code": "malformed_command", "message": f"malformed command: {item.malformed}"})
                elif command.key in unreadable:  # kept as stored, for an operator to repair; the key waits
                    reply = _failure({"code": "state_unreadable",
                                      "message": f"the stored state of {command.key} no longer reads"})
                    if command.kind == ALARM and due.get(_alarm_id(command)) is not None:
                        writes.postpone(command, b.partition, now + ALARM_RETRY)  # fires again, maybe repaired
                elif command.kind == ALARM and due.get(_alarm_id(command)) is None:
                    reply = _success({"skipped": "alarm was cancelled, moved or already fired"})
                elif command.kind == ALARM and not _still_set(command, due):
                    reply = _success({"skipped": "alarm was moved"})
                else:
                    if command.kind == ALARM:
                        writes.cancel([_alarm_id(command)])
                    reply = writes.apply(command, item.traceparent)
                    if command.kind == ALARM:
                        writes.not_again(command)
                recorded[command.id] = reply
                writes.records.append({"lane": lane, "command_id": command.id, "reply": reply, "applied_at": now})
            if item.reply_to:
                result.replies.append((item.reply_to, reply.encode()))
        result.applied = True
        result.last_sequence = _leaves_cursor_at(b)
        group.append((b, result, writes))

    _flush(conn, lane, group, now)
    for _, result, writes in group:
        result.states = writes.states  # as committed by this transaction: loaded, kept, or changed
        result.deleted = writes.deleted
        result.events = list(zip(writes.events, writes.traces, strict=True))
        result.earliest_alarm = min((a["due_at"] for a in writes.alarms.values()), default=None)
        result.alarms_changed = bool(writes.alarms or writes.alarms_gone)
    inserts = [{"lane": lane, "partition": b.partition, "last_sequence": r.last_sequence}
               for b, r, _ in group if b.partition not in current]
    updates = [{"b_lane": lane, "b_partition": b.partition, "b_sequence": r.last_sequence}
               for b, r, _ in group if b.partition in current and not claimed]
    if inserts:
        conn.run(_INSERT_CURSORS, inserts)
    if updates:
        conn.run(_UPDATE_CURSORS, updates)
    notes = [{"lane": lane, "partition": b.partition, "tenant": tenant, "next_at": at}
             for b, _, _ in group for tenant, at in b.tenant_alarms.items()]
    if notes and (upsert := _upsert_tenant_alarms(conn.dialect)) is not None:
        conn.run(upsert, notes)
    elif notes:
        if not isinstance(conn, CoreStatements):
            raise TypeError("a dialect without upserts runs through a session")
        for note in notes:
            note_tenant_alarms(conn.session, lane, note["partition"], note["tenant"], note["next_at"])
    return results


def _claim(conn: Statements, lane: str, batches: list[PartitionBatch]) -> bool:
    """A lone partition's batch: move its cursor to where the batch leaves it, if the cursor still says
    ``expected``; False: not moved (a first cursor, a group, or another owner's move: the cursors are read).

    One statement where a group reads its cursors (locking them) and writes them back: a tenant's part of a lane
    batch is a transaction of its own, a command or two. The UPDATE is the fence: on PostgreSQL it locks the row as
    ``SELECT .. FOR UPDATE`` does, and one whose cursor another owner moved changes no row."""
    if len(batches) != 1 or not batches[0].expected:
        return False
    b = batches[0]
    if not b.batch and b.through <= b.expected:
        return False
    return conn.changed(_CLAIM_CURSOR, {"b_lane": lane, "b_partition": b.partition, "b_expected": b.expected,
                                        "b_sequence": _leaves_cursor_at(b)}) == 1


def _leaves_cursor_at(b: PartitionBatch) -> int:
    return max(b.batch[-1].command.sequence if b.batch else 0, b.through)


def note_tenant_alarms(session: Session, lane: str, partition: int, tenant: str, at: datetime) -> None:
    """``tenant`` has alarms in ``partition`` due from ``at`` on (kept at the earliest noted)."""
    row = session.get(LaneTenantAlarm, (lane, partition, tenant))
    if row is None:
        session.add(LaneTenantAlarm(lane=lane, partition=partition, tenant=tenant, next_at=at))
    elif at < row.next_at:
        row.next_at = at
    session.flush()


def set_tenant_alarms(session: Session, lane: str, partition: int, tenant: str, at: datetime | None) -> None:
    """What ``tenant``'s database says after its due alarms were fired: its next alarm's time (None: none)."""
    row = session.get(LaneTenantAlarm, (lane, partition, tenant))
    if row is not None and at is None:
        session.delete(row)
    elif row is not None and at is not None:
        row.next_at = at
    elif at is not None:
        session.add(LaneTenantAlarm(lane=lane, partition=partition, tenant=tenant, next_at=at))


def tenants_with_alarms(session: Session, lane: str, partitions: list[int],
                        until: datetime) -> list[tuple[int, str]]:
    """(partition, tenant) of other tenants whose alarms in ``partitions`` may be due by ``until``."""
    return [(p, t) for p, t in session.execute(
        select(LaneTenantAlarm.partition, LaneTenantAlarm.tenant).where(
            LaneTenantAlarm.lane == lane, LaneTenantAlarm.partition.in_(partitions), LaneTenantAlarm.next_at <= until)
        .order_by(LaneTenantAlarm.next_at).limit(500))]


def next_tenant_alarm_at(session: Session, lane: str, partitions: list[int]) -> datetime | None:
    return session.scalar(select(LaneTenantAlarm.next_at).where(
        LaneTenantAlarm.lane == lane, LaneTenantAlarm.partition.in_(partitions))
        .order_by(LaneTenantAlarm.next_at).limit(1))


def _flush(conn: Statements, lane: str, group: list[tuple[PartitionBatch, BatchResult, _Writes]],
           now: datetime) -> None:
    """Write the group's changes with one statement per table (executemany: one round trip on psycopg's pipeline)."""
    records = [r for _, _, w in group for r in w.records]
    if records:
        conn.run(_INSERT_RECORDS, records)
    if events := [e for _, _, w in group for e in w.events]:
        conn.run(INSERT_EVENTS, event_rows(events, [t for _, _, w in group for t in w.traces]))

    upsert = _upsert_alarms(conn.dialect)
    # One row per id: two keys may set the same alarm id, and an upsert may not touch a row twice.
    alarm_rows = list({row["alarm_id"]: row for _, _, w in group for row in w.alarms.values()}.values())
    # Cancelled ids go; set ones are upserted. (Skipping the DELETE of ids an owner knows have no
    # row, such as a cart's "forget" alarm each add cancels, measured no gain once partitions are
    # grouped, and is only sound while no two keys share an alarm id: not done.)
    gone = {a for _, _, w in group for a in w.alarms_gone}
    if upsert is None:
        gone |= {row["alarm_id"] for row in alarm_rows}
    for chunk in _chunks(sorted(gone), IN_CHUNK):
        conn.run(_DELETE_ALARMS, {"lane": lane, "ids": chunk})
    if alarm_rows:
        conn.run(upsert if upsert is not None else _INSERT_ALARMS, alarm_rows)

    dropped = {k for _, _, w in group for k in w.deleted & w.existing}
    for chunk in _chunks(sorted(dropped), IN_CHUNK):
        conn.run(_DELETE_STATES, {"lane": lane, "ids": chunk})
    new: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for _, _, w in group:
        for key in w.dirty:
            state = w.states[key].model_dump_json()
            if key in w.existing:
                changed.append({"b_lane": lane, "b_key": key, "b_state": state, "b_at": now})
            else:
                new.append({"lane": lane, "key": key, "state": state, "updated_at": now})
    if new:
        conn.run(_INSERT_STATES, new)
    if changed:
        conn.run(_UPDATE_STATES, changed)


class _Writes:
    """A batch's changes, gathered in memory in command order and written at the end."""

    def __init__(self, spec: LaneSpec[Any], partition: int, states: dict[str, BaseModel],
                 due: dict[str, datetime], tenant: str | None = None) -> None:
        self.spec = spec
        self.tenant = tenant
        self.partition = partition
        self.states = states
        self.due = due
        """When the alarms this group's firings are for are due, kept as commands move them: a firing later in the
        batch sees a move made before it (read once, a moved alarm fired at its old time and the move was lost)."""
        self.existing = set(states)
        """Keys with a row in the database before this batch."""
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self.events: list[Any] = []
        self.traces: list[str | None] = []
        """Each event's trace: its command's."""
        self.alarms: dict[str, dict[str, Any]] = {}
        self.alarms_gone: set[str] = set()

    def postpone(self, firing: LaneCommand, partition: int, to: datetime) -> None:
        """Set a firing's alarm again for ``to`` (its key could not take it now)."""
        alarm_id = _alarm_id(firing)
        self.alarms_gone.discard(alarm_id)
        self.alarms[alarm_id] = {"lane": self.spec.name, "alarm_id": alarm_id, "partition": partition,
                                 "key": firing.key, "due_at": to, "body": json.dumps(firing.body.get("body") or {})}
        self.due[alarm_id] = to

    def apply(self, command: LaneCommand, traceparent: str | None = None) -> str:
        spec = self.spec
        state = self.states.get(command.key) or spec.initial(command.key)
        try:
            outcome = spec.handle(state, command)
        except DomainError as refusal:
            return _failure(refusal.to_dict())
        except Exception:
            # A bug in a pure handler: answer it and move on, rather than stall the whole partition.
            log.exception("lane %s: handler failed on %s %s", spec.name, command.kind, command.id)
            return Reply.failure("internal_error", f"{spec.name} could not apply {command.kind}").model_dump_json()
        if outcome.delete:
            self.states.pop(command.key, None)
            self.dirty.discard(command.key)
            self.deleted.add(command.key)
        elif outcome.state is not None:
            self.states[command.key] = outcome.state
            self.dirty.add(command.key)
            self.deleted.discard(command.key)
        if outcome.events:
            if self.tenant is not None:  # a tenant's command causes that tenant's events, whatever the handler said
                outcome.events = [e if e.tenant == self.tenant else e.model_copy(update={"tenant": self.tenant})
                                  for e in outcome.events]
            self.events.extend(outcome.events)
            self.traces.extend([traceparent] * len(outcome.events))
        self.cancel(outcome.cancel_alarms)
        for alarm in outcome.alarms:
            self.alarms_gone.discard(alarm.id)
            self.alarms[alarm.id] = {"lane": spec.name, "alarm_id": alarm.id, "partition": self.partition,
                                     "key": command.key, "due_at": alarm.at, "body": json.dumps(alarm.body)}
            self.due[alarm.id] = alarm.at
        return _success(outcome.reply)

    def not_again(self, firing: LaneCommand) -> None:
        """A handler that sets the alarm firing now again for the very time it fires at would make a firing with
        the id of this one: a duplicate, answered from its record, its row never deleted. It has fired: drop it."""
        again = self.alarms.get(_alarm_id(firing))
        if again is not None and fired_alarm_id(_alarm_id(firing), again["due_at"]) == firing.id:
            log.warning("lane %s: alarm %s set again for the time it just fired at; dropped", self.spec.name,
                        _alarm_id(firing))
            self.cancel([_alarm_id(firing)])

    def cancel(self, alarm_ids: list[str]) -> None:
        for alarm_id in alarm_ids:
            self.alarms.pop(alarm_id, None)
            self.alarms_gone.add(alarm_id)
            self.due.pop(alarm_id, None)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _parse_states(spec: LaneSpec[Any], stored: dict[str, str], into: dict[str, BaseModel]) -> set[str]:
    """Parse stored states into ``into``; the keys whose state no longer fits the model (their commands are
    refused, every other key goes on: one bad row must not stop its partition)."""
    unreadable: set[str] = set()
    for key, raw in stored.items():
        try:
            into[key] = spec.state.model_validate_json(raw)
        except ValueError as exc:
            log.error("lane %s: the stored state of %s does not read (%s); its commands are refused",
                      spec.name, key, str(exc)[:200])
            unreadable.add(key)
    return unreadable


def _success(data: dict[str, Any]) -> str:
    return json.dumps({"ok": True, "data": data, "error": None}, separators=(",", ":"), default=str)


def _failure(error: dict[str, Any]) -> str:
    """The reply envelope of a refusal, as :class:`cartwheel.contracts.base.Reply` reads it (tested)."""
    return json.dumps({"ok": False, "data": None, "error": error}, separators=(",", ":"), default=str)


def _alarm_id(command: LaneCommand) -> str:
    return str(command.body.get("alarm_id", ""))


def _still_set(firing: LaneCommand, due: Mapping[str, datetime]) -> bool:
    """The firing's alarm is still set, for the time this firing is for."""
    at = due.get(_alarm_id(firing))
    return at is not None and at.isoformat() == firing.body.get("due_at")


def _early(firing: LaneCommand) -> bool:
    """The firing reached the stream before its due time by more than :data:`ALARM_EARLY` (the server's clock)."""
    try:
        due_at = datetime.fromisoformat(str(firing.body.get("due_at")))
    except ValueError:
        return False
    return firing.issued_at + ALARM_EARLY < (due_at if due_at.tzinfo else due_at.replace(tzinfo=UTC))


def due_alarms(session: Session, lane: str, partitions: list[int], until: datetime,
               limit: int = 500) -> list[LaneAlarm]:
    return list(session.scalars(
        select(LaneAlarm).where(LaneAlarm.lane == lane, LaneAlarm.partition.in_(partitions), LaneAlarm.due_at <= until)
        .order_by(LaneAlarm.due_at).limit(limit)
    ))


def next_alarm_at(session: Session, lane: str, partitions: list[int]) -> datetime | None:
    return session.scalar(
        select(LaneAlarm.due_at).where(LaneAlarm.lane == lane, LaneAlarm.partition.in_(partitions))
        .order_by(LaneAlarm.due_at).limit(1)
    )


def dead_letter(session: Session, lane: str, partition: int, expected: int, item: Incoming, error: str) -> BatchResult:
    """Set ``item`` aside (a dead letter, with ``error``), answer it as failed and move the cursor past it, if the
    cursor is still at ``expected`` (else nothing is written and ``applied`` is False, as for a batch)."""
    conn = CoreStatements(session)
    current = _select_in(conn, _SELECT_CURSORS, lane, {partition}).get(partition, 0)  # type: ignore[arg-type]
    command = item.command
    if current != expected:
        return BatchResult(applied=False, last_sequence=current)
    reply = recorded_reply(session, lane, command.id)
    if reply is None:
        reply = _failure({"code": "dead_letter", "message": f"{lane} could not store the outcome of {command.kind}; "
                                                            "it was set aside for an operator"})
        now = utcnow()
        if command.kind == ALARM:  # else it would fire again every 30 s, to be answered from this record
            session.execute(delete(LaneAlarm).where(LaneAlarm.lane == lane, LaneAlarm.alarm_id == _alarm_id(command)))
            error = f"{error} (its alarm was cancelled)"
        session.add(LaneDeadLetter(lane=lane, command_id=command.id, sequence=command.sequence, partition=partition,
                                   key=command.key[:200], kind=command.kind[:64], body=json.dumps(command.body),
                                   error=error[:2000], failed_at=now))
        session.add(LaneCommandRecord(lane=lane, command_id=command.id, reply=reply, applied_at=now))
    if current == 0 and session.get(LaneCursor, (lane, partition)) is None:
        session.add(LaneCursor(lane=lane, partition=partition, last_sequence=command.sequence))
    else:
        conn.run(_UPDATE_CURSORS, [{"b_lane": lane, "b_partition": partition, "b_sequence": command.sequence}])
    replies = [(item.reply_to, reply.encode())] if item.reply_to else []
    return BatchResult(applied=True, last_sequence=command.sequence, replies=replies)


def dead_letters(session: Session, lane: str | None = None, limit: int = 100) -> list[LaneDeadLetter]:
    query = select(LaneDeadLetter).order_by(LaneDeadLetter.failed_at.desc()).limit(limit)
    return list(session.scalars(query.where(LaneDeadLetter.lane == lane) if lane else query))


def recorded_reply(session: Session, lane: str, command_id: str) -> str | None:
    return session.scalar(select(LaneCommandRecord.reply).where(
        LaneCommandRecord.lane == lane, LaneCommandRecord.command_id == command_id))


def load_states(session: Session, lane: str, keys: list[str]) -> dict[str, str]:
    """State JSON of each key that has one."""
    return dict(session.execute(
        select(LaneState.key, LaneState.state).where(LaneState.lane == lane, LaneState.key.in_(keys))
    ).all())


def load_all_states(session: Session, lane: str, after_key: str | None, limit: int) -> list[tuple[str, str]]:
    query = select(LaneState.key, LaneState.state).where(LaneState.lane == lane)
    if after_key:
        query = query.where(LaneState.key > after_key)
    return [tuple(r) for r in session.execute(query.order_by(LaneState.key).limit(limit))]  # type: ignore[misc]


def prune_commands(session: Session, lane: str, before: datetime) -> None:
    session.execute(delete(LaneCommandRecord).where(LaneCommandRecord.lane == lane,
                                                    LaneCommandRecord.applied_at < before))
