"""Lanes with a database per tenant, the pure parts: whose a command is, and a batch split by tenant."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cartwheel import subjects
from cartwheel.lanes.store import Incoming
from cartwheel.lanes.tenancy import missing_database, split_by_tenant, tenant_of, unknown_tenant_reply
from cartwheel.lanes.types import LaneCommand


def incoming(sequence: int, tenant: str | None) -> Incoming:
    command = LaneCommand(id=f"c{sequence}", key="k", kind="append", body={}, sequence=sequence,
                          issued_at=datetime(2026, 12, 7, tzinfo=UTC))
    return Incoming(command=command, reply_to=None, tenant=tenant)


def test_a_commands_tenant_is_its_header_else_its_body_else_the_own_tenant() -> None:
    header = {subjects.LANE_TENANT_HEADER: "acme"}
    assert tenant_of(header, {"tenant": "globex"}, own="default") == "acme"
    assert tenant_of({}, {"tenant": "globex"}, own="default") == "globex"  # sent before the header
    assert tenant_of({}, {}, own="default") is None
    assert tenant_of({subjects.LANE_TENANT_HEADER: "default"}, {}, own="default") is None  # the own: None
    assert tenant_of({}, {"tenant": 7}, own="default") is None  # not a name: the body's field is someone else's


def test_a_batch_splits_by_tenant_keeping_stream_order_within_each() -> None:
    batch = [incoming(1, "acme"), incoming(2, None), incoming(3, "globex"), incoming(4, "acme"), incoming(5, None)]
    parts = split_by_tenant(batch)
    assert list(parts) == ["acme", None, "globex"]  # in order of their first command
    assert {t: [i.command.sequence for i in items] for t, items in parts.items()} == {
        "acme": [1, 4], None: [2, 5], "globex": [3]}
    assert split_by_tenant([]) == {}


def test_an_unknown_tenant_is_answered_in_the_reply_envelope() -> None:
    reply = json.loads(unknown_tenant_reply("nobody"))
    assert reply["ok"] is False and reply["error"]["code"] == "unknown_tenant"


def test_a_missing_postgresql_database_is_told_from_one_that_is_down() -> None:
    assert missing_database(Exception('connection failed: FATAL:  database "x_inventory__acme" does not exist'))
    assert not missing_database(Exception("connection failed: Connection refused"))
