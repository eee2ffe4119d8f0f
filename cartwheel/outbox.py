"""Transactional outbox: events are rows written with the state change, then relayed to JetStream.

Consumers record the event ids they handled (:func:`first_delivery`) so a redelivered or
re-published event has no second effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial

from nats.js import JetStreamContext
from sqlalchemy import Integer, String, Text, delete, func, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from cartwheel import tracing
from cartwheel.contracts.base import Message, utcnow
from cartwheel.db import Database, PlatformBase, UTCDateTime
from cartwheel.observability import Trouble

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
        now = utcnow()
        if traceparents is None:
            traceparents = [tracing.current_traceparent()] * len(events)
        session.execute(insert(OutboxEvent.__table__), [
            {"event_id": e.id, "subject": e.subject, "payload": e.model_dump_json(),  # type: ignore[attr-defined]
             "created_at": now, "attempts": 0, "traceparent": traceparent}
            for e, traceparent in zip(events, traceparents, strict=True)
        ])


def first_delivery(session: Session, consumer: str, event_id: str) -> bool:
    """True the first time ``consumer`` sees ``event_id`` (recorded in the caller's transaction)."""
    if session.get(ProcessedEvent, (consumer, event_id)) is not None:
        return False
    session.add(ProcessedEvent(consumer=consumer, event_id=event_id))
    session.flush()  # a concurrent twin fails here on the primary key, rolling its work back
    return True


class OutboxRelay:
    """Publishes unpublished outbox rows in order, with their event id as ``Nats-Msg-Id``.

    Woken by :meth:`notify` after a commit, every ``interval`` seconds while a publish is failing,
    and every ``idle`` seconds regardless, so rows left behind by a crash (this replica's before a
    restart, or another's) go out. Several replicas may relay at once:
    JetStream's duplicate window drops the second copy and consumers dedupe by event id.
    """

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        *,
        batch: int = 200,
        interval: float = 1.0,
        idle: float = 5.0,
        keep: timedelta = timedelta(days=7),
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.js = js
        self.batch = batch
        self.interval = interval
        self.idle = max(idle, interval)
        self._behind = False  # the last round left events unpublished: try again after ``interval``
        self.keep = keep
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._on_failure = on_failure  # counts a failed publish (the service's metric)
        self._trouble = Trouble(log, "outbox relay: publishing events")

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

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
                async with asyncio.timeout(self.interval if self._behind else self.idle):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while await self.relay_pending() == self.batch and not self._stopping:
                    pass
                if time.monotonic() >= next_prune and not self._stopping:
                    await self.db.run(self._prune)
                    next_prune = time.monotonic() + 3600
            except Exception as exc:
                self._behind = True
                self._trouble.failed(exc, traceback=True)

    async def relay_pending(self) -> int:
        self._behind = True  # until this round has published all it read
        rows = await self.db.run(self._pending)
        published: list[int] = []
        failed = False
        for position, event_id, subject, payload, traceparent in rows:
            headers = {"Nats-Msg-Id": event_id}
            if traceparent:
                headers[tracing.TRACEPARENT] = traceparent
            try:
                if tracing.enabled and traceparent:  # the relay's wait shows in the trace, before the consumers
                    with tracing.span(f"{subject} publish", parent=tracing.context_of(traceparent),
                                      kind=tracing.PRODUCER, attributes={"cartwheel.event_id": event_id}):
                        await self.js.publish(subject, payload.encode(), headers=tracing.inject(headers), timeout=5)
                else:
                    await self.js.publish(subject, payload.encode(), headers=headers, timeout=5)
            except Exception as exc:
                self._on_failure()
                self._trouble.failed(f"event {event_id} on {subject} not published yet ({exc!r})")
                await self.db.run(partial(self._failed, position=position, error=repr(exc)))
                failed = True
                break  # keep order: nothing after a failed event goes out before it
            published.append(position)
        if published:
            await self.db.run(lambda s: self._published(s, published))
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

    def _pending(self, session: Session) -> list[tuple[int, str, str, str, str | None]]:
        query = (
            select(OutboxEvent.position, OutboxEvent.event_id, OutboxEvent.subject, OutboxEvent.payload,
                   OutboxEvent.traceparent)
            .where(OutboxEvent.published_at.is_(None))
            .order_by(OutboxEvent.position)
            .limit(self.batch)
        )
        return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]

    @staticmethod
    def _published(session: Session, positions: list[int]) -> None:
        session.execute(update(OutboxEvent).where(OutboxEvent.position.in_(positions)).values(published_at=utcnow()))

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
