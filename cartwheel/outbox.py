"""Transactional outbox: events are rows written with the state change, then relayed to JetStream.

Consumers record the event ids they handled (:func:`first_delivery`) so a redelivered or
re-published event has no second effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import Integer, String, Text, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from cartwheel import tracing
from cartwheel.contracts.base import Message, utcnow
from cartwheel.db import Database, PlatformBase, UTCDateTime
from cartwheel.observability import Trouble
from cartwheel.statements import Statements, statements_of

log = logging.getLogger(__name__)


class OutboxEvent(PlatformBase):
    __tablename__ = "outbox"

    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    traceparent: Mapped[str | None] = mapped_column(String(64))
    """The trace of the change that recorded the event, continued by its consumers (sent as a NATS header)."""


class ProcessedEvent(PlatformBase):
    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def record_event(session: Session, event: Message) -> None:
    """Queue ``event`` in the same transaction as the change that caused it."""
    record_events(session, [event])


def record_events(session: Session, events: list[Message], traceparents: Sequence[str | None] | None = None) -> None:
    """Queue many events with one multi-row insert (the lanes runtime writes a batch's worth at once).

    ``traceparents``: each event's trace (the lanes' commands each have their own); by default the current one."""
    if events:
        session.execute(INSERT_EVENTS, event_rows(events, traceparents))


INSERT_EVENTS = insert(OutboxEvent.__table__)


def event_rows(events: list[Message], traceparents: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """The outbox rows of ``events``, for :data:`INSERT_EVENTS`."""
    now = utcnow()
    if traceparents is None:
        traceparents = [tracing.current_traceparent()] * len(events)
    return [{"event_id": e.id, "subject": e.subject, "payload": e.model_dump_json(),  # type: ignore[attr-defined]
             "created_at": now, "attempts": 0, "traceparent": traceparent}
            for e, traceparent in zip(events, traceparents, strict=True)]


def first_delivery(session: Session, consumer: str, event_id: str) -> bool:
    """True the first time ``consumer`` sees ``event_id`` (recorded in the caller's transaction)."""
    if session.get(ProcessedEvent, (consumer, event_id)) is not None:
        return False
    session.add(ProcessedEvent(consumer=consumer, event_id=event_id))
    session.flush()  # a concurrent twin fails here on the primary key, rolling its work back
    return True


_MARK_PUBLISHED = update(OutboxEvent.__table__).where(
    OutboxEvent.__table__.c.event_id.in_(bindparam("ids", expanding=True))).values(published_at=bindparam("at"))


_MARK_POSITIONS = update(OutboxEvent.__table__).where(
    OutboxEvent.__table__.c.position.in_(bindparam("positions", expanding=True))).values(published_at=bindparam("at"))


_ANY_UNPUBLISHED = select(OutboxEvent.position).where(OutboxEvent.published_at.is_(None)).limit(1)


_PENDING = (
    select(OutboxEvent.position, OutboxEvent.event_id, OutboxEvent.subject, OutboxEvent.payload,
           OutboxEvent.traceparent)
    .where(OutboxEvent.published_at.is_(None))
    .order_by(OutboxEvent.position)
    .limit(bindparam("limit", type_=Integer))
)


def mark_published(where: Session | Statements, event_ids: Sequence[str]) -> None:
    """The rows of ``event_ids``, published from memory by a relay, are published now (a statement per 500)."""
    if event_ids:
        statements, now = statements_of(where), utcnow()
        for start in range(0, len(event_ids), 500):
            statements.run(_MARK_PUBLISHED, {"ids": list(event_ids[start:start + 500]), "at": now})


def has_unpublished(statements: Statements) -> bool:
    """Whether the outbox holds an event not published: one statement, for a look at a closed tenant's file
    (:meth:`~cartwheel.tenants.databases.TenantDatabases.read_closed`). A quiet tenant's upkeep round opened its
    database and started and stopped a relay to find nothing, 8 ms of CPU each, 4 a second in every service."""
    return bool(statements.rows(_ANY_UNPUBLISHED, {}))


class OutboxRelay:
    """Publishes unpublished outbox rows in order, with their event id as ``Nats-Msg-Id``.

    Woken by :meth:`notify` after a commit, every ``interval`` seconds while a publish is failing,
    and every ``idle`` seconds regardless, so rows left behind by a crash (this replica's before a
    restart, or another's) go out. Several replicas may relay at once:
    JetStream's duplicate window drops the second copy and consumers dedupe by event id.

    Events a caller hands over with :meth:`committed` (the lanes do: they know what their commit wrote) go out
    from memory, without reading the outbox back, and their rows are marked published in bulk, at most every
    ``mark_every`` seconds and before any read of the outbox. With a database per tenant that is what keeps a
    tenant's few events from costing two transactions each (a read, then a mark): the profile of add-to-cart
    with 100 busy tenants had the relays' reads and marks at 30% of the cart service's samples. Order is kept:
    handed-over events go out in the order they were committed, and only while nothing read from the outbox
    is waiting (after :meth:`notify`, a failure or the idle round, the outbox is read first, up to its end).
    """

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        *,
        batch: int = 200,
        interval: float = 1.0,
        idle: float = 5.0,
        mark_every: float = 1.0,
        keep: timedelta = timedelta(days=7),
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.js = js
        self.batch = batch
        self.interval = interval
        self.idle = max(idle, interval)
        self.mark_every = mark_every
        self._behind = False  # the last round left events unpublished: try again after ``interval``
        self._read_wanted = True  # the outbox may hold events not handed over: read it (at start: a crash's)
        self._read_at = 0.0  # monotonic time of the last read of the outbox (at least every ``idle`` s)
        self._fresh: deque[tuple[Message, str | None]] = deque()  # handed over, not published yet
        self._unmarked: list[str] = []  # event ids published from memory, their rows not marked yet
        self._marked_at = 0.0
        self.keep = keep
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._on_failure = on_failure  # counts a failed publish (the service's metric)
        self._trouble = Trouble(log, "outbox relay: publishing events")

    def notify(self) -> None:
        """Events were committed to the outbox: read it and publish them."""
        self._read_wanted = True
        self._wake.set()

    def committed(self, events: Sequence[Message], traceparents: Sequence[str | None]) -> None:
        """``events`` were just committed to the outbox by this process, in this order: publish them from here."""
        self._fresh.extend(zip(events, traceparents, strict=True))
        self._wake.set()

    def take_marks(self) -> list[str]:
        """The ids of events published from memory whose rows are not marked yet, for the caller's next transaction
        on this database to mark (:func:`mark_published`): under load a lane's next commit carries them, so the
        relay writes none of its own. Give them back with :meth:`give_back_marks` if that transaction fails."""
        marks, self._unmarked = self._unmarked, []
        return marks

    def give_back_marks(self, marks: list[str]) -> None:
        if marks:
            if not self._unmarked:
                self._marked_at = time.monotonic()
            self._unmarked.extend(marks)
            self._wake.set()  # the relay writes them itself when they are due

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        self._wake.set()  # what a crash left behind goes out now

    async def stop(self) -> None:
        """Let the relay finish its round, send what is pending one last time, and end.

        A flag rather than ``Task.cancel()``: on Python 3.11 a cancel that lands as
        ``wait_for`` completes can be swallowed, and the relay would then never stop.
        """
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        next_prune = 0.0
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait()):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._round()
                if self._stopping:
                    await self._round(read=True)  # one last look, and the marks written
                if time.monotonic() >= next_prune and not self._stopping:
                    await self.db.run(self._prune)
                    next_prune = time.monotonic() + 3600
            except Exception as exc:
                self._behind = self._read_wanted = True
                self._trouble.failed(exc, traceback=True)

    def _read_due(self) -> float:
        """When the outbox is read again though nothing asked: what a crash or another replica left goes out."""
        return self._read_at + (self.interval if self._behind else self.idle)

    def _wait(self) -> float:
        due = min(self._read_due(), self._marked_at + self.mark_every if self._unmarked else math.inf)
        return max(0.0, due - time.monotonic())

    async def _round(self, read: bool = False) -> None:
        if read or self._read_wanted or self._behind or time.monotonic() >= self._read_due():
            self._read_wanted = False
            while await self.relay_pending() == self.batch and not self._stopping:
                pass
        if self._fresh and not self._behind:
            await self._publish_fresh()
        if self._unmarked and (read or time.monotonic() >= self._marked_at + self.mark_every):
            await self._write_marks()

    async def _publish_fresh(self) -> None:
        while self._fresh and not self._read_wanted:
            event, traceparent = self._fresh[0]
            try:
                await self._publish(event.id, event.subject, event.model_dump_json(),  # type: ignore[attr-defined]
                                    traceparent)
            except Exception as exc:
                self._on_failure()
                self._trouble.failed(f"event {event.id} on {event.subject} not published yet "  # type: ignore[attr-defined]
                                     f"({exc!r}); reading the outbox from here")
                self._behind = self._read_wanted = True
                self._fresh.clear()  # every one of them is in the outbox: read in order from there
                return
            self._fresh.popleft()
            if not self._unmarked:
                self._marked_at = time.monotonic()  # the first of these marks waits at most ``mark_every``
            self._unmarked.append(event.id)  # type: ignore[attr-defined]
        self._trouble.ok()

    async def _write_marks(self) -> None:
        marks, self._unmarked = self._unmarked, []
        try:
            await self.db.run_statements(lambda s: mark_published(s, marks))
        except Exception:
            self._unmarked[:0] = marks  # kept for the next round; the outbox is not read before they are written
            raise
        finally:
            self._marked_at = time.monotonic()  # written or failed: the next try after ``mark_every``

    async def _publish(self, event_id: str, subject: str, payload: str, traceparent: str | None) -> None:
        headers = {"Nats-Msg-Id": event_id}
        if traceparent:
            headers[tracing.TRACEPARENT] = traceparent
        if tracing.enabled and traceparent:  # the relay's wait shows in the trace, before the consumers
            with tracing.span(f"{subject} publish", parent=tracing.context_of(traceparent),
                              kind=tracing.PRODUCER, attributes={"cartwheel.event_id": event_id}):
                await self.js.publish(subject, payload.encode(), headers=tracing.inject(headers), timeout=5)
        else:
            await self.js.publish(subject, payload.encode(), headers=headers, timeout=5)

    async def relay_pending(self) -> int:
        """Read the outbox (writing the marks owed first, so that what went out from memory is not read again)
        and publish what it holds, in order. Returns how many rows it read."""
        self._behind = True  # until this round has published all it read
        self._read_at = time.monotonic()
        marks, self._unmarked = self._unmarked, []
        try:  # a write only when there are marks to write: a read does not wait for the database's writer
            rows = await (self.db.run_statements(lambda s: self._pending(s, marks)) if marks
                          else self.db.read_statements(self._pending))
        except Exception:
            self._unmarked[:0] = marks
            raise
        if marks:
            self._marked_at = time.monotonic()
        published: list[int] = []
        failed = False
        for position, event_id, subject, payload, traceparent in rows:
            try:
                await self._publish(event_id, subject, payload, traceparent)
            except Exception as exc:
                self._on_failure()
                self._trouble.failed(f"event {event_id} on {subject} not published yet ({exc!r})")
                await self.db.run(partial(self._failed, position=position, error=repr(exc)))
                failed = True
                break  # keep order: nothing after a failed event goes out before it
            published.append(position)
        if published:
            await self.db.run_statements(lambda s: s.run(_MARK_POSITIONS, {"positions": published, "at": utcnow()}))
            if self._fresh:  # handed over meanwhile and read here: out already
                sent = {event_id for _, event_id, *_ in rows[:len(published)]}
                self._fresh = deque(f for f in self._fresh if f[0].id not in sent)  # type: ignore[attr-defined]
        self._behind = failed
        if not failed:
            self._trouble.ok()
        return len(rows)

    @staticmethod
    def backlog(session: Session) -> tuple[int, datetime | None]:
        """How many events wait to be published, and when the oldest was recorded."""
        count, oldest = session.execute(select(func.count(), func.min(OutboxEvent.created_at))
                                        .where(OutboxEvent.published_at.is_(None))).one()
        return count, oldest

    def _pending(self, where: Session | Statements,
                 marks: Sequence[str] = ()) -> list[tuple[int, str, str, str, str | None]]:
        statements = statements_of(where)
        mark_published(statements, marks)
        return statements.rows(_PENDING, {"limit": self.batch})  # type: ignore[return-value]

    @staticmethod
    def _failed(session: Session, position: int, error: str) -> None:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.position == position)
            .values(attempts=OutboxEvent.attempts + 1, last_error=error[:2000])
        )

    def _prune(self, session: Session) -> None:
        cutoff = utcnow() - self.keep
        session.execute(delete(OutboxEvent).where(OutboxEvent.published_at < cutoff))
        session.execute(delete(ProcessedEvent).where(ProcessedEvent.processed_at < cutoff))
