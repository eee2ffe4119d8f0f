"""The lanes runtime's database work: one transaction per batch, and the queries around it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from cartwheel.contracts.base import Reply, utcnow
from cartwheel.errors import DomainError
from cartwheel.lanes.models import LaneAlarm, LaneCommandRecord, LaneCursor, LaneState
from cartwheel.lanes.types import ALARM, LaneCommand, LaneSpec
from cartwheel.outbox import record_event

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


def cursor(session: Session, lane: str, partition: int) -> int:
    row = session.get(LaneCursor, (lane, partition))
    return row.last_sequence if row else 0


def apply_batch(session: Session, spec: LaneSpec[Any], partition: int, expected: int,
                batch: list[Incoming]) -> BatchResult:
    """Apply ``batch`` (in stream order) if the partition's cursor is still at ``expected``."""
    lane = spec.name
    row = session.scalar(
        select(LaneCursor).where(LaneCursor.lane == lane, LaneCursor.partition == partition).with_for_update()
    )
    if (row.last_sequence if row else 0) != expected:
        return BatchResult(applied=False, last_sequence=row.last_sequence if row else 0)
    if row is None:
        row = LaneCursor(lane=lane, partition=partition, last_sequence=0)
        session.add(row)

    ids = list({item.command.id for item in batch})
    recorded = dict(session.execute(
        select(LaneCommandRecord.command_id, LaneCommandRecord.reply)
        .where(LaneCommandRecord.lane == lane, LaneCommandRecord.command_id.in_(ids))
    ).all())
    keys = list({item.command.key for item in batch})
    rows = {r.key: r for r in session.scalars(select(LaneState).where(LaneState.lane == lane, LaneState.key.in_(keys)))}
    states: dict[str, BaseModel] = {k: spec.state.model_validate_json(r.state) for k, r in rows.items()}
    alarm_ids = [_alarm_id(item.command) for item in batch if item.command.kind == ALARM]
    pending_alarms = {a.alarm_id: a for a in session.scalars(
        select(LaneAlarm).where(LaneAlarm.lane == lane, LaneAlarm.alarm_id.in_(alarm_ids))
    )} if alarm_ids else {}

    result = BatchResult(applied=True, last_sequence=batch[-1].command.sequence)
    dirty: set[str] = set()
    records: list[dict[str, Any]] = []
    now = utcnow()
    for item in batch:
        command = item.command
        reply = recorded.get(command.id)
        if reply is not None:
            result.duplicates += 1
        else:
            if command.kind == ALARM and not _alarm_still_due(pending_alarms, command):
                reply = _success({"skipped": "alarm was cancelled or moved"})
            else:
                if command.kind == ALARM:
                    session.delete(pending_alarms.pop(_alarm_id(command)))
                reply = _handle(session, spec, partition, command, states, dirty, result)
            recorded[command.id] = reply
            records.append({"lane": lane, "command_id": command.id, "reply": reply, "applied_at": now})
        if item.reply_to:
            result.replies.append((item.reply_to, reply.encode()))

    if records:  # one multi-row insert: per-object ORM adds cost more than the handlers themselves
        session.execute(insert(LaneCommandRecord.__table__), records)
    for key in dirty:
        encoded = states[key].model_dump_json()
        if key in rows:
            rows[key].state, rows[key].updated_at = encoded, now
        else:
            session.add(LaneState(lane=lane, key=key, state=encoded, updated_at=now))
    row.last_sequence = result.last_sequence
    return result


def _handle(session: Session, spec: LaneSpec[Any], partition: int, command: LaneCommand,
            states: dict[str, BaseModel], dirty: set[str], result: BatchResult) -> str:
    state = states.get(command.key) or spec.initial(command.key)
    try:
        outcome = spec.handle(state, command)
    except DomainError as refusal:
        return Reply.failure(refusal.code, refusal.message, **refusal.details).model_dump_json()
    except Exception:
        # A bug in a pure handler: answer it and move on, rather than stall the whole partition.
        log.exception("lane %s: handler failed on %s %s", spec.name, command.kind, command.id)
        return Reply.failure("internal_error", f"{spec.name} could not apply {command.kind}").model_dump_json()
    if outcome.state is not None:
        states[command.key] = outcome.state
        dirty.add(command.key)
    for event in outcome.events:
        record_event(session, event)
    result.events += len(outcome.events)
    if outcome.cancel_alarms:
        session.execute(delete(LaneAlarm).where(LaneAlarm.lane == spec.name,
                                                LaneAlarm.alarm_id.in_(outcome.cancel_alarms)))
        result.alarms_changed = True
    for alarm in outcome.alarms:
        session.merge(LaneAlarm(lane=spec.name, alarm_id=alarm.id, partition=partition, key=command.key,
                                due_at=alarm.at, body=json.dumps(alarm.body)))
        result.alarms_changed = True
    return _success(outcome.reply)


def _success(data: dict[str, Any]) -> str:
    return json.dumps({"ok": True, "data": data, "error": None}, separators=(",", ":"), default=str)


def _alarm_id(command: LaneCommand) -> str:
    return str(command.body.get("alarm_id", ""))


def _alarm_still_due(pending: dict[str, LaneAlarm], command: LaneCommand) -> bool:
    alarm = pending.get(_alarm_id(command))
    return alarm is not None and alarm.due_at.isoformat() == command.body.get("due_at")


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
