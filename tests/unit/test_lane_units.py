"""Lanes pieces that need no server: partition mapping and reply envelopes."""

from __future__ import annotations

import asyncio

import pytest

from cartwheel import subjects
from cartwheel.bus import unwrap
from cartwheel.errors import DomainError
from cartwheel.lanes import partition_of
from cartwheel.lanes.store import _failure, _success


def test_lane_reply_envelopes_read_as_replies() -> None:
    assert unwrap(_success({"left": 3}).encode(), "s") == {"left": 3}
    with pytest.raises(DomainError) as caught:
        unwrap(_failure(DomainError("gone", code="out_of_stock", available=0).to_dict()).encode(), "s")
    assert (caught.value.code, caught.value.details) == ("out_of_stock", {"available": 0})


def test_partition_of_is_stable_and_in_range() -> None:
    keys = [f"product-{i}" for i in range(1000)]
    parts = [partition_of(k, 16) for k in keys]
    assert all(0 <= p < 16 for p in parts) and len(set(parts)) == 16
    assert parts == [partition_of(k, 16) for k in keys]


def test_a_failed_group_falls_back_to_one_transaction_per_partition() -> None:
    """One partition's batch the database refuses must not stall the partitions grouped with it."""
    from types import SimpleNamespace
    from typing import Any

    from cartwheel.lanes.runtime import GroupApplier
    from cartwheel.lanes.store import BatchResult, PartitionBatch

    rounds: list[list[int]] = []

    async def transaction(batches: list[PartitionBatch]) -> list[BatchResult]:
        rounds.append([b.partition for b in batches])
        if any(b.partition == 3 for b in batches):
            raise RuntimeError("refused")
        return [BatchResult(applied=True, last_sequence=b.expected + 1) for b in batches]

    async def scenario() -> list[Any]:
        runtime: Any = SimpleNamespace(spec=SimpleNamespace(name="t"),
                                       metrics=SimpleNamespace(group=SimpleNamespace(observe=lambda n: None)))
        applier = GroupApplier(runtime, grouped=True)
        applier._transaction = transaction  # type: ignore[method-assign]
        applier.start()
        try:
            return await asyncio.gather(*(applier.apply(PartitionBatch(p, 10 * p, [])) for p in range(5)),
                                        return_exceptions=True)
        finally:
            await applier.stop()

    outcomes = asyncio.run(scenario())
    assert rounds[0] == [0, 1, 2, 3, 4]  # handed over together: one round
    assert sorted(rounds[1:]) == [[0], [1], [2], [3], [4]]  # then each on its own
    assert isinstance(outcomes[3], RuntimeError)
    assert [o.last_sequence for i, o in enumerate(outcomes) if i != 3] == [1, 11, 21, 41]


def test_the_limits_of_ids_agree_with_their_columns() -> None:
    """Issue 14, R2: the client took command ids of 200 characters for a column of 100, and a firing's id
    (``alarm:<id>:<ms>``) could outgrow it: PostgreSQL refused the row and the partition looped."""
    from datetime import UTC, datetime

    from cartwheel.lanes.client import COMMAND_ID, KEY
    from cartwheel.lanes.models import LaneAlarm, LaneCommandRecord, LaneState
    from cartwheel.lanes.types import ALARM_ID_MAX, COMMAND_ID_MAX, KEY_MAX, STORED_ID, Alarm, fired_alarm_id
    from services.cart.state import abandon_alarm, forget_alarm

    assert LaneCommandRecord.__table__.c.command_id.type.length == COMMAND_ID_MAX
    assert LaneState.__table__.c.key.type.length == LaneAlarm.__table__.c.key.type.length == KEY_MAX
    assert LaneAlarm.__table__.c.alarm_id.type.length >= ALARM_ID_MAX
    assert COMMAND_ID.match("c" * COMMAND_ID_MAX) and not COMMAND_ID.match("c" * (COMMAND_ID_MAX + 1))
    assert KEY.match("k" * KEY_MAX) and not KEY.match("k" * (KEY_MAX + 1))
    late = datetime(2286, 1, 1, tzinfo=UTC)  # 13-digit milliseconds until then
    assert len(fired_alarm_id("a" * ALARM_ID_MAX, late)) <= COMMAND_ID_MAX
    assert STORED_ID.match(fired_alarm_id("abandon-" + "c" * 64, late))  # the runtime takes its own firings
    with pytest.raises(ValueError):
        Alarm(id="a" * (ALARM_ID_MAX + 1), at=late)
    longest_cart = "c" * 64  # CartId
    assert max(len(abandon_alarm(longest_cart)), len(forget_alarm(longest_cart))) <= ALARM_ID_MAX


@pytest.mark.parametrize(("data", "problem"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"[" * 100_000, "not JSON"),  # nested past the parser's recursion limit
    (b'{"kind": 3, "body": {}}', "kind must be a string"),
    (b'{"kind": "add", "body": [1]}', "kind must be a string"),
    (b'{"kind": "alarm", "body": {"alarm_id": "a"}}', "an alarm needs"),
])
def test_a_command_the_lane_cannot_read_says_why(data: bytes, problem: str) -> None:
    from cartwheel.lanes.runtime import decode_envelope

    kind, body, said = decode_envelope(data)
    assert (kind, body) == ("", {}) and said is not None and said.startswith(problem)
    assert decode_envelope(b'{"kind": "add", "body": {"n": 1}}') == ("add", {"n": 1}, None)


def test_a_reply_is_handed_over_in_process_only_to_a_started_client_on_this_loop() -> None:
    import threading
    from types import SimpleNamespace

    from cartwheel.lanes.client import LaneClient, answer_in_process

    sent: list[str] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        sent.append(headers[subjects.LANE_REPLY_HEADER])

    async def subscribe(subject: str, cb: object) -> SimpleNamespace:
        async def unsubscribe() -> None:
            pass

        return SimpleNamespace(unsubscribe=unsubscribe)

    nc = SimpleNamespace(jetstream=lambda: None, new_inbox=lambda: "_INBOX.abc", publish=publish, subscribe=subscribe)

    async def scenario() -> None:
        client = await LaneClient(nc, "test").start()  # type: ignore[arg-type]
        calling = asyncio.create_task(client.call("k1", "append", {}, command_id="c1", timeout=5))
        while not sent:
            await asyncio.sleep(0)
        on_another_loop: list[bool] = []
        thread = threading.Thread(target=lambda: on_another_loop.append(
            asyncio.run(_answer("_INBOX.lane.abc.c1"))))
        thread.start()
        thread.join()
        assert on_another_loop == [False]  # a future of this loop is never set from another thread
        assert not answer_in_process("_INBOX.lane.other.c1", b"{}")  # not a client here: goes over NATS
        assert sent == ["_INBOX.lane.abc.c1"]
        assert answer_in_process("_INBOX.lane.abc.c1", _success({"n": 1}).encode())
        assert await calling == {"n": 1}
        await client.close()
        assert not answer_in_process("_INBOX.lane.abc.c1", b"{}")  # closed: forgotten

    async def _answer(reply_to: str) -> bool:
        return answer_in_process(reply_to, b"{}")

    asyncio.run(scenario())
