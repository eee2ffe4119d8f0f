"""Operators' commands on a service's lanes: ``cartwheel dead-letters SERVICE [--replay COMMAND_ID]`` (what a
lane set aside, and sending it again) and ``cartwheel lanes-rebase SERVICE`` (after a lane's stream lost its
commands)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from sqlalchemy import delete, select, update
from sqlalchemy.engine import make_url

from cartwheel import natsauth, subjects
from cartwheel.db import Database
from cartwheel.lanes import store
from cartwheel.lanes.models import LaneCursor, LaneDeadLetter
from cartwheel.lanes.types import ALARM
from cartwheel.settings import Settings
from cartwheel.tenants.databases import UnknownTenant, existing_database_url
from cartwheel.tenants.registry import Registry


def show_dead_letters(settings: Settings, service: str, replay: str | None, tenant: str | None = None) -> int:
    """``tenant``: whose database to look in (a tenant's commands are set aside in its own); None: the own."""
    try:
        url = existing_database_url(settings, service, tenant) if tenant else settings.database_url(service)
    except UnknownTenant as exc:
        print(f"dead-letters: {exc}", file=sys.stderr)
        return 2
    db = Database(url)
    try:
        if replay is None:
            letters = db.read_sync(lambda s: store.dead_letters(s, limit=1000))
            for d in letters:
                print(f"{d.failed_at:%Y-%m-%d %H:%M:%S} {d.lane} command {d.command_id} ({d.kind} on {d.key}, "
                      f"partition {d.partition}, sequence {d.sequence}): {d.error}")
            print(f"{len(letters)} dead letter(s) in {service} (the newest 1,000)")
            return 0
        letter = db.read_sync(lambda s: s.scalars(select(LaneDeadLetter).where(LaneDeadLetter.command_id == replay))
                              .first())
        if letter is None:
            print(f"dead-letters: no dead letter of command {replay} in {service}", file=sys.stderr)
            return 1
        if letter.kind == ALARM:
            print("dead-letters: an alarm's firing is not sent again (its alarm was cancelled): a command to its "
                  "key sets it again", file=sys.stderr)
            return 1
        command_id = f"replay-{uuid.uuid4().hex}"
        asyncio.run(_send(settings, letter, command_id, tenant))
        db.run_sync(lambda s: s.execute(delete(LaneDeadLetter).where(
            LaneDeadLetter.lane == letter.lane, LaneDeadLetter.command_id == letter.command_id)))
        print(f"sent {letter.kind} on {letter.key} again as command {command_id}")
        return 0
    finally:
        db.close()


async def _send(settings: Settings, letter: LaneDeadLetter, command_id: str, tenant: str | None) -> None:
    nc = await nats.connect(settings.nats_servers, connect_timeout=5, max_reconnect_attempts=2,
                            **natsauth.connect_options(settings, natsauth.ADMIN))
    try:
        envelope = json.dumps({"kind": letter.kind, "body": json.loads(letter.body)}).encode()
        headers = {"Nats-Msg-Id": command_id} | ({subjects.LANE_TENANT_HEADER: tenant} if tenant else {})
        await nc.jetstream().publish(subjects.lane_command(letter.lane, letter.key), envelope, headers=headers,
                                     timeout=5)
    finally:
        await nc.close()


def rebase(settings: Settings, service: str) -> int:
    """Every partition whose cursor lies past its lane's stream's end (the stream was deleted or lost its data,
    and numbers new commands from 1) reads the stream again from its start: what is there now was never applied
    (and a command id applied before is still answered from its record, never applied twice). The commands the
    stream lost are lost: their callers had no answer, and retry.

    With a database per tenant, each keeps its own cursor of the partition: such a partition's cursor goes back
    to 0 in every tenant's database (a tenant's cursor below the new end counts the old stream's numbers too)."""
    cursors: dict[str, list[Any]] = {}
    for tenant in _tenants(settings):  # one database open at a time: a thousand tenants hold no thousand pools
        try:
            url = settings.database_url(service) if tenant == settings.tenant else \
                existing_database_url(settings, service, tenant)
        except UnknownTenant as exc:  # registered, its databases not made (or not any more)
            print(f"tenant {tenant}: skipped ({exc})")
            continue
        cursors[tenant] = _with_database(url, lambda s: list(s.execute(
            select(LaneCursor.lane, LaneCursor.partition, LaneCursor.last_sequence)).all()), tenant)
    lanes = sorted({lane for rows in cursors.values() for lane, _, _ in rows})
    ends = asyncio.run(_stream_ends(settings, lanes)) if lanes else {}
    behind = sorted({(lane, partition) for rows in cursors.values() for lane, partition, at in rows
                     if at > ends[lane]})
    for tenant, rows in cursors.items():
        moved = [(lane, partition, at) for lane, partition, at in rows if (lane, partition) in behind]
        if not moved:
            continue
        url = settings.database_url(service, None if tenant == settings.tenant else tenant)
        _with_database(url, lambda s, moved=moved: [s.execute(
            update(LaneCursor).where(LaneCursor.lane == lane, LaneCursor.partition == partition)
            .values(last_sequence=0)) for lane, partition, _ in moved], tenant, write=True)
        for lane, partition, at in moved:
            whose = "" if tenant == settings.tenant else f" (tenant {tenant})"
            print(f"lane {lane} partition {partition}{whose}: cursor {at} "
                  f"{'was past' if at > ends[lane] else 'counted'} its stream's end ({ends[lane]}); "
                  "it reads the stream from its start")
    print(f"{len(behind)} partition(s) rebased in {service}")
    return 0


def _with_database(url: str, work: Any, tenant: str, *, write: bool = False) -> Any:
    db = Database(url, pool_size=1)
    try:
        return db.run_sync(work) if write else db.read_sync(work)
    finally:
        db.close()


def _tenants(settings: Settings) -> list[str]:
    """The installation's own tenant and every registered one (none if there is no registry yet)."""
    url = make_url(settings.control_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        return [settings.tenant]
    registry = Registry(settings.control_url, reserved=[settings.tenant])
    try:
        return [settings.tenant, *registry.names()]
    finally:
        registry.close()


async def _stream_ends(settings: Settings, lanes: list[str]) -> dict[str, int]:
    nc = await nats.connect(settings.nats_servers, connect_timeout=5, max_reconnect_attempts=2,
                            **natsauth.connect_options(settings, natsauth.ADMIN))
    try:
        js, ends = nc.jetstream(), {}
        for lane in lanes:
            try:
                ends[lane] = (await js.stream_info(subjects.lane_stream(lane))).state.last_seq
            except nats.js.errors.NotFoundError:
                ends[lane] = 0
        return ends
    finally:
        await nc.close()
