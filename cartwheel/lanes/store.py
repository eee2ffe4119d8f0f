"""The lanes runtime's database work: one transaction per batch, and the queries around it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from cartwheel.contracts.base import Reply, utcnow
from cartwheel.errors import DomainError
from cartwheel.lanes.models import LaneAlarm, LaneCommandRecord, LaneCursor, LaneState
from cartwheel.lanes.types import ALARM, LaneCommand, LaneSpec
from cartwheel.outbox import record_events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    """A command as read from the stream, with where its reply goes."""

    command: LaneCommand
    reply_to: str | None


@dataclass
class BatchResult:
    applied: bool
    """False when the partition's cursor had moved: another replica applied these; nothing was written."""
    last_sequence: int
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    duplicates: int = 0
    events: int = 0
    alarms_changed: bool = False
    earliest_alarm: datetime | None = None
    states: dict[str, BaseModel] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)


def cursor(session: Session, lane: str, partition: int) -> int:
    row = session.get(LaneCursor, (lane, partition))
    return row.last_sequence if row else 0


def apply_batch(session: Session, spec: LaneSpec[Any], partition: int, expected: int,
                batch: list[Incoming], cached: Mapping[str, BaseModel] | None = None) -> BatchResult:
    """Apply ``batch`` (in stream order) if the partition's cursor is still at ``expected``.

    Reads everything the batch needs with a few queries, runs the handlers in memory, then
    writes with a few multi-row statements: the cost per command stays that of its handler.
    ``cached`` holds states as this owner last committed them (never read again from the
    database); ``BatchResult.states`` are the ones this batch changed, for the owner to keep.
    """
    lane = spec.name
    current = session.scalar(select(LaneCursor.last_sequence).where(
        LaneCursor.lane == lane, LaneCursor.partition == partition).with_for_update())
    if (current or 0) != expected:
        return BatchResult(applied=False, last_sequence=current or 0)

    recorded = dict(session.execute(select(LaneCommandRecord.command_id, LaneCommandRecord.reply).where(
        LaneCommandRecord.lane == lane, LaneCommandRecord.command_id.in_({i.command.id for i in batch}))).all())
    cached = cached or {}
    keys = {i.command.key for i in batch}
    stored = dict(session.execute(select(LaneState.key, LaneState.state).where(
        LaneState.lane == lane, LaneState.key.in_(keys - cached.keys()))).all()) if keys - cached.keys() else {}
    alarm_ids = {_alarm_id(i.command) for i in batch if i.command.kind == ALARM}
    due = dict(session.execute(select(LaneAlarm.alarm_id, LaneAlarm.due_at).where(
        LaneAlarm.lane == lane, LaneAlarm.alarm_id.in_(alarm_ids))).all()) if alarm_ids else {}

    known = {k: cached[k] for k in keys & cached.keys()}
    known.update({k: spec.state.model_validate_json(v) for k, v in stored.items()})
    in_database = set(known)  # before the handlers add new keys to ``known``
    writes = _Writes(spec, partition, known)
    result = BatchResult(applied=True, last_sequence=batch[-1].command.sequence)
    now = utcnow()
    for item in batch:
        command = item.command
        reply = recorded.get(command.id)
        if reply is not None:
            result.duplicates += 1
        else:
            if command.kind == ALARM and due.get(_alarm_id(command)) is None:
                reply = _success({"skipped": "alarm was cancelled, moved or already fired"})
            elif command.kind == ALARM and due[_alarm_id(command)].isoformat() != command.body.get("due_at"):
                reply = _success({"skipped": "alarm was moved"})
            else:
                if command.kind == ALARM:
                    writes.cancel([_alarm_id(command)])
                    due.pop(_alarm_id(command))
                reply = writes.apply(command)
            recorded[command.id] = reply
            writes.records.append({"lane": lane, "command_id": command.id, "reply": reply, "applied_at": now})
        if item.reply_to:
            result.replies.append((item.reply_to, reply.encode()))

    writes.flush(session, in_database, now)
    result.states = writes.states  # as committed by this transaction: loaded, kept, or changed
    result.deleted = writes.deleted
    if current is None:
        session.execute(insert(LaneCursor.__table__).values(lane=lane, partition=partition,
                                                            last_sequence=result.last_sequence))
    else:
        session.execute(update(LaneCursor.__table__).where(LaneCursor.lane == lane, LaneCursor.partition == partition)
                        .values(last_sequence=result.last_sequence))
    result.events = len(writes.events)
    result.earliest_alarm = min((a["due_at"] for a in writes.alarms.values()), default=None)
    result.alarms_changed = bool(writes.alarms or writes.alarms_gone)
    return result


class _Writes:
    """A batch's changes, gathered in memory in command order and written at the end."""

    def __init__(self, spec: LaneSpec[Any], partition: int, states: dict[str, BaseModel]) -> None:
        self.spec = spec
        self.partition = partition
        self.states = states
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self.events: list[Any] = []
        self.alarms: dict[str, dict[str, Any]] = {}
        self.alarms_gone: set[str] = set()

    def apply(self, command: LaneCommand) -> str:
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
        self.events.extend(outcome.events)
        self.cancel(outcome.cancel_alarms)
        for alarm in outcome.alarms:
            self.alarms_gone.discard(alarm.id)
            self.alarms[alarm.id] = {"lane": spec.name, "alarm_id": alarm.id, "partition": self.partition,
                                     "key": command.key, "due_at": alarm.at, "body": json.dumps(alarm.body)}
        return _success(outcome.reply)

    def cancel(self, alarm_ids: list[str]) -> None:
        for alarm_id in alarm_ids:
            self.alarms.pop(alarm_id, None)
            self.alarms_gone.add(alarm_id)

    def flush(self, session: Session, existing: set[str], now: datetime) -> None:
        lane = self.spec.name
        if self.records:
            session.execute(insert(LaneCommandRecord.__table__), self.records)
        record_events(session, self.events)
        replaced = self.alarms_gone | set(self.alarms)
        for chunk in _chunks(sorted(replaced), 500):
            session.execute(delete(LaneAlarm.__table__).where(LaneAlarm.lane == lane, LaneAlarm.alarm_id.in_(chunk)))
        if self.alarms:
            session.execute(insert(LaneAlarm.__table__), list(self.alarms.values()))
        for chunk in _chunks(sorted(self.deleted & existing), 500):
            session.execute(delete(LaneState.__table__).where(LaneState.lane == lane, LaneState.key.in_(chunk)))
        rows = [{"lane": lane, "key": k, "state": self.states[k].model_dump_json(), "updated_at": now}
                for k in self.dirty]
        if new := [r for r in rows if r["key"] not in existing]:
            session.execute(insert(LaneState.__table__), new)
        if changed := [{"b_key": r["key"], "b_state": r["state"]} for r in rows if r["key"] in existing]:
            table = LaneState.__table__
            session.execute(
                update(table).where(table.c.lane == lane, table.c.key == bindparam("b_key"))
                .values(state=bindparam("b_state"), updated_at=now),
                changed,
            )


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _success(data: dict[str, Any]) -> str:
    return json.dumps({"ok": True, "data": data, "error": None}, separators=(",", ":"), default=str)


def _failure(error: dict[str, Any]) -> str:
    """The reply envelope of a refusal, as :class:`cartwheel.contracts.base.Reply` reads it (tested)."""
    return json.dumps({"ok": False, "data": None, "error": error}, separators=(",", ":"), default=str)


def _alarm_id(command: LaneCommand) -> str:
    return str(command.body.get("alarm_id", ""))


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
