"""What a lane handler sees and returns. Handlers are pure: no I/O, no clock (use ``command.issued_at``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from cartwheel.contracts.base import Message

S = TypeVar("S", bound=BaseModel)

COMMAND_ID_MAX = 100
"""Longest command id (``lane_commands.command_id``): the client refuses longer ones, the runtime answers a
longer one arriving on the stream (published past the client) as malformed instead of failing to record it."""
KEY_MAX = 200
"""Longest key (``lane_state.key``, ``lane_alarms.key``)."""
ALARM_ID_MAX = 78
"""Longest alarm id: a firing's command id, ``alarm:<id>:<milliseconds>``, must fit :data:`COMMAND_ID_MAX`."""

COMMAND_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{COMMAND_ID_MAX}}}$")
KEY = re.compile(rf"^[A-Za-z0-9_-]{{1,{KEY_MAX}}}$")
"""What command ids and keys may be: plain tokens within their columns (checked by the client)."""
STORED_ID = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{COMMAND_ID_MAX}}}$")
"""What the runtime records as a command id: a client's, or its own (an alarm's firing, ``alarm:<id>:<ms>``);
anything else arriving on the stream (published past the client) is answered as malformed."""

ALARM = "alarm"
"""``LaneCommand.kind`` of a due alarm. Its ``body`` is ``{"alarm_id", "due_at", "body": <the alarm's body>}``;
its ``id`` is unique per firing, so an alarm set again under the same id fires again."""


@dataclass(frozen=True)
class LaneCommand:
    id: str
    """Command id (the caller's ``Nats-Msg-Id``); applied at most once, retries get the first reply."""
    key: str
    kind: str
    body: dict[str, Any]
    sequence: int
    """Position in the lane's stream: commands of one partition apply in this order."""
    issued_at: datetime
    """When the stream stored the command: the handler's "now", the same on every replay."""


@dataclass(frozen=True)
class Alarm:
    id: str
    at: datetime
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < len(self.id) <= ALARM_ID_MAX:
            raise ValueError(f"alarm id {self.id[:80]!r} is not 1 to {ALARM_ID_MAX} characters")


def fired_alarm_id(alarm_id: str, due_at: datetime) -> str:
    """The command id of an alarm's firing: one per alarm and due time, so a republished firing dedupes."""
    return f"alarm:{alarm_id}:{int(due_at.timestamp() * 1000)}"


@dataclass
class Outcome(Generic[S]):
    """What applying one command does. Raise :class:`cartwheel.errors.DomainError` instead to refuse it
    (the refusal is recorded and replayed to retries; state, events and alarms stay as they were)."""

    reply: dict[str, Any]
    state: S | None = None
    """The key's new state; ``None`` leaves it as it was."""
    delete: bool = False
    """Forget the key's state (its row goes); a later command sees ``LaneSpec.initial`` again."""
    events: list[Message] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    """Alarms to set (an existing alarm with the same id is moved)."""
    cancel_alarms: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LaneSpec(Generic[S]):
    name: str
    """Lane name: subjects ``<name>.cmd.<key>``, stream ``LANE_<NAME>``."""
    state: type[S]
    initial: Callable[[str], S]
    """State of a key never seen before."""
    handle: Callable[[S, LaneCommand], Outcome[S]]
    partitions: int = 16
