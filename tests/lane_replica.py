"""A replica of a test lane, run as its own process by the lanes tests: ``python -m tests.lane_replica``.

The "ledger" lane keeps, per key, a stock counter and the sequence of every command it
applied, so tests can check order, exactly-once effect and failover from the outside.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from pydantic import BaseModel

from cartwheel.errors import DomainError
from cartwheel.lanes import ALARM, Alarm, LaneCommand, LaneSpec, Outcome
from cartwheel.lanes.runtime import LaneRuntime
from cartwheel.observability import configure_logging
from cartwheel.service import Service
from cartwheel.settings import get_settings

LANE = "ledger"
PARTITIONS = 8


class Ledger(BaseModel):
    stock: int = 0
    applied: list[int] = []  # stream sequences, in the order applied
    fired: list[str] = []  # alarm ids that fired


def handle(state: Ledger, command: LaneCommand) -> Outcome[Ledger]:
    seen = [*state.applied, command.sequence]
    if command.kind == "stock":
        return Outcome(
            reply={"stock": command.body["stock"]},
            state=Ledger(stock=command.body["stock"], applied=seen, fired=state.fired),
        )
    if command.kind == "take":
        if state.stock < 1:
            raise DomainError("nothing left", code="out_of_stock", available=0)
        return Outcome(
            reply={"sequence": command.sequence, "position": len(seen), "left": state.stock - 1},
            state=Ledger(stock=state.stock - 1, applied=seen, fired=state.fired),
        )
    if command.kind == "append":
        return Outcome(
            reply={"sequence": command.sequence, "position": len(seen)},
            state=Ledger(stock=state.stock, applied=seen, fired=state.fired),
        )
    if command.kind == "remind":
        at = command.issued_at + timedelta(seconds=float(command.body["after"]))
        return Outcome(
            reply={"at": at.isoformat()},
            alarms=[Alarm(id=command.body["alarm"], at=at, body={"note": command.body.get("note", "")})],
        )
    if command.kind == "poison":  # a state the database can't be given (it does not serialise): a dead letter
        return Outcome(reply={}, state=Ledger.model_construct(stock=object(), applied=seen, fired=state.fired))
    if command.kind == "drop":
        return Outcome(reply={"dropped": command.key}, delete=True)
    if command.kind == "forget":
        return Outcome(reply={}, cancel_alarms=[command.body["alarm"]])
    if command.kind == ALARM:
        return Outcome(
            reply={},
            state=Ledger(stock=state.stock, applied=state.applied, fired=[*state.fired, command.body["alarm_id"]]),
        )
    raise DomainError(f"unknown command {command.kind}", code="validation_failed")


TICK = 0.25  # the ownership round: quick hand-overs in tests
SPEC = LaneSpec(name=LANE, state=Ledger, initial=lambda key: Ledger(), handle=handle, partitions=PARTITIONS)


def build() -> Service:
    settings = get_settings()
    # Inventory's database has the lane tables (its migration 0002); the ledger's rows are its own.
    service = Service("inventory", settings)
    LaneRuntime(service, SPEC, lease_ttl=2.0, tick=TICK)
    return service


if __name__ == "__main__":
    settings = get_settings()
    configure_logging("ledger", settings.log_level, settings.log_format)
    logging.getLogger("cartwheel.lanes").setLevel(logging.INFO)
    asyncio.run(build().app.run())
