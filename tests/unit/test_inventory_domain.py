"""Stock rules as pure functions: commands in lane order, no clock, no database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cartwheel import subjects
from cartwheel.contracts.inventory import (
    MAX_ON_HAND,
    CommitReservation,
    InitStock,
    ReleaseReservation,
    ReserveStock,
    Restock,
    SetStock,
    StockCommand,
    StockLevel,
)
from cartwheel.errors import DomainError
from cartwheel.lanes.types import ALARM, LaneCommand, Outcome
from services.inventory import domain
from services.inventory.state import ENDED_KEPT, Counts, Stock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Lane:
    """Applies commands to one product's stock the way the runtime does: in order, refusals change nothing."""

    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    stock: Stock = field(default_factory=Stock)
    sequence: int = 0
    now: datetime = T0
    alarms: dict[str, Any] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)

    def command(self, kind: str, body: dict[str, Any], command_id: str | None = None) -> LaneCommand:
        self.sequence += 1
        return LaneCommand(command_id or str(uuid.uuid4()), self.key, kind, body, self.sequence, self.now)

    def apply(self, command: LaneCommand) -> Outcome[Stock]:
        outcome = domain.handle(self.stock, command)
        if outcome.state is not None:
            self.stock = outcome.state
        self.events += outcome.events
        for alarm_id in outcome.cancel_alarms:
            self.alarms.pop(alarm_id, None)
        for alarm in outcome.alarms:
            self.alarms[alarm.id] = alarm
        return outcome

    def send(self, message: StockCommand) -> dict[str, Any]:
        return self.apply(self.command(message.kind, message.model_dump(mode="json"))).reply

    def refused(self, message: StockCommand) -> DomainError:
        before = self.stock
        with pytest.raises(DomainError) as refusal:
            self.send(message)
        assert self.stock is before
        return refusal.value

    def reserve(self, reservation_id: str = "r1", quantity: int = 1, ttl: int = 60, **extra: Any) -> dict[str, Any]:
        return self.send(self.reserve_cmd(reservation_id, quantity, ttl, **extra))

    def reserve_cmd(self, reservation_id: str = "r1", quantity: int = 1, ttl: int = 60, **extra: Any) -> ReserveStock:
        fields = {"order_id": "o1", "quantity": quantity, "ttl_seconds": ttl, **extra}
        return ReserveStock(product_id=self.key, reservation_id=reservation_id, **fields)

    def commit(self, reservation_id: str = "r1") -> dict[str, Any]:
        return self.send(CommitReservation(product_id=self.key, reservation_id=reservation_id))

    def release(self, reservation_id: str = "r1") -> dict[str, Any]:
        return self.send(ReleaseReservation(product_id=self.key, reservation_id=reservation_id))

    def restock(self, quantity: int) -> dict[str, Any]:
        return self.send(Restock(product_id=self.key, quantity=quantity))

    def fire_due_alarms(self) -> list[Outcome[Stock]]:
        due = sorted((a for a in self.alarms.values() if a.at <= self.now), key=lambda a: a.at)
        outcomes = []
        for alarm in due:
            del self.alarms[alarm.id]
            body = {"alarm_id": alarm.id, "due_at": alarm.at.isoformat(), "body": alarm.body}
            outcomes.append(self.apply(self.command(ALARM, body)))
        return outcomes

    def kinds(self) -> list[str]:
        return [event.subject for event in self.events]


def stocked(on_hand: int) -> Lane:
    lane = Lane()
    if on_hand:
        lane.restock(on_hand)
    lane.events.clear()
    return lane


def level(lane: Lane) -> tuple[int, int, int]:
    return lane.stock.on_hand, lane.stock.reserved, lane.stock.available


# -- reserve ------------------------------------------------------------------------------


def test_reserve_holds_stock_and_sets_an_expiry_alarm() -> None:
    lane = stocked(5)
    reply = lane.reserve("r1", quantity=2, ttl=90, order_id="order-7")
    assert reply == {
        "status": "reserved",
        "reservation_id": "r1",
        "order_id": "order-7",
        "quantity": 2,
        "expires_at": (T0 + timedelta(seconds=90)).isoformat().replace("+00:00", "Z"),
        "available": 3,  # what is left for others: orders' hint for asking intents early
    }
    assert level(lane) == (5, 2, 3)
    (alarm,) = lane.alarms.values()
    assert alarm.at == T0 + timedelta(seconds=90) and alarm.body == {"reservation_id": "r1"}
    (event,) = lane.events
    assert event.subject == subjects.INVENTORY_RESERVED
    assert (event.product_id, event.reservation_id, event.order_id, event.quantity) == (lane.key, "r1", "order-7", 2)
    assert (event.on_hand, event.reserved, event.available) == (5, 2, 3)
    assert event.occurred_at == T0


def test_reserve_beyond_what_is_available_is_refused_with_what_is_left() -> None:
    lane = stocked(3)
    lane.reserve("r1", quantity=2)
    refusal = lane.refused(lane.reserve_cmd("r2", quantity=2))
    assert refusal.code == "out_of_stock"
    assert refusal.details == {"product_id": lane.key, "available": 1, "requested": 2}
    assert level(lane) == (3, 2, 1)


def test_a_product_nobody_stocked_is_out_of_stock() -> None:
    lane = Lane()
    assert lane.refused(lane.reserve_cmd()).details["available"] == 0


def test_the_last_units_make_one_out_of_stock_event() -> None:
    lane = stocked(2)
    lane.reserve("r1")
    lane.reserve("r2")
    for rid in ("r3", "r4"):
        lane.refused(lane.reserve_cmd(rid))
    assert lane.kinds() == [subjects.INVENTORY_RESERVED] * 2 + [subjects.INVENTORY_OUT_OF_STOCK]
    assert lane.events[-1].available == 0


def test_a_flash_sale_never_oversells() -> None:
    lane = stocked(100)
    sold = refused = 0
    for n in range(2000):
        try:
            lane.reserve(f"r{n}")
            sold += 1
        except DomainError as refusal:
            assert refusal.code == "out_of_stock"
            refused += 1
    assert (sold, refused) == (100, 1900)
    assert level(lane) == (100, 100, 0)


def test_reserving_a_held_reservation_again_answers_the_same_and_holds_nothing_more() -> None:
    lane = stocked(5)
    first = lane.reserve("r1", quantity=2)
    lane.now += timedelta(seconds=10)
    again = lane.reserve("r1", quantity=2)
    assert again == first
    assert level(lane) == (5, 2, 3)
    assert len(lane.events) == 1 and len(lane.alarms) == 1


def test_reserving_an_ended_reservation_again_is_refused() -> None:
    lane = stocked(5)
    lane.reserve("r1")
    lane.commit("r1")
    refusal = lane.refused(lane.reserve_cmd("r1"))
    assert refusal.code == "reservation_closed" and refusal.details == {"status": "committed"}


def test_one_reservation_id_may_hold_several_products_with_distinct_alarms() -> None:
    a, b = stocked(1), stocked(1)
    a.reserve("order-1")
    b.reserve("order-1")
    assert set(a.alarms).isdisjoint(b.alarms)


# -- commit -------------------------------------------------------------------------------


def test_commit_takes_the_units_out_of_stock_and_cancels_the_alarm() -> None:
    lane = stocked(5)
    lane.reserve("r1", quantity=2)
    assert lane.commit("r1") == {"status": "committed", "reservation_id": "r1", "quantity": 2}
    assert level(lane) == (3, 0, 3)
    assert lane.alarms == {}
    assert lane.events[-1].subject == subjects.INVENTORY_COMMITTED
    assert (lane.events[-1].on_hand, lane.events[-1].quantity) == (3, 2)


def test_committing_twice_answers_the_same_and_takes_nothing_more() -> None:
    lane = stocked(5)
    lane.reserve("r1", quantity=2)
    first = lane.commit("r1")
    assert lane.commit("r1") == first
    assert level(lane) == (3, 0, 3)
    assert lane.kinds().count(subjects.INVENTORY_COMMITTED) == 1


def test_committing_an_unknown_reservation_is_refused() -> None:
    lane = stocked(5)
    assert lane.refused(CommitReservation(product_id=lane.key, reservation_id="nope")).code == "reservation_not_found"


def test_committing_a_released_reservation_is_refused() -> None:
    lane = stocked(5)
    lane.reserve("r1")
    lane.release("r1")
    assert lane.refused(CommitReservation(product_id=lane.key, reservation_id="r1")).code == "reservation_released"
    assert level(lane) == (5, 0, 5)


# -- expiry -------------------------------------------------------------------------------


def test_an_expired_reservation_gives_its_units_back() -> None:
    lane = stocked(1)
    lane.reserve("r1", ttl=30)
    lane.now += timedelta(seconds=31)
    (outcome,) = lane.fire_due_alarms()
    assert outcome.reply == {"status": "expired", "reservation_id": "r1", "quantity": 1}
    assert level(lane) == (1, 0, 1)
    assert lane.kinds()[-1] == subjects.INVENTORY_EXPIRED
    lane.reserve("r2")  # the unit can be sold again


def test_expiry_before_commit_in_lane_order_wins_and_the_commit_is_refused() -> None:
    lane = stocked(1)
    lane.reserve("r1", ttl=30)
    lane.now += timedelta(seconds=30)
    lane.fire_due_alarms()
    refusal = lane.refused(CommitReservation(product_id=lane.key, reservation_id="r1"))
    assert refusal.code == "reservation_expired"
    assert level(lane) == (1, 0, 1)


def test_commit_before_expiry_in_lane_order_wins_and_the_alarm_does_nothing() -> None:
    lane = stocked(1)
    lane.reserve("r1", ttl=30)
    alarm = next(iter(lane.alarms.values()))
    lane.commit("r1")
    lane.now += timedelta(seconds=30)
    # The alarm was already on its way when the commit cancelled it: it arrives after the commit.
    body = {"alarm_id": alarm.id, "due_at": alarm.at.isoformat(), "body": alarm.body}
    outcome = lane.apply(lane.command(ALARM, body))
    assert outcome.reply == {"status": "ignored", "reservation_id": "r1"} and outcome.state is None
    assert level(lane) == (0, 0, 0)
    assert subjects.INVENTORY_EXPIRED not in lane.kinds()


def test_release_after_expiry_says_expired() -> None:
    lane = stocked(1)
    lane.reserve("r1", ttl=1)
    lane.now += timedelta(seconds=1)
    lane.fire_due_alarms()
    assert lane.release("r1")["status"] == "expired"
    assert level(lane) == (1, 0, 1)


def test_ended_reservations_are_remembered_up_to_a_bound() -> None:
    lane = stocked(1)
    for n in range(ENDED_KEPT + 10):
        lane.reserve(f"r{n}")
        lane.release(f"r{n}")
    assert len(lane.stock.ended) == ENDED_KEPT
    assert "r0" not in lane.stock.ended and f"r{ENDED_KEPT + 9}" in lane.stock.ended


# -- release ------------------------------------------------------------------------------


def test_release_gives_the_units_back_once() -> None:
    lane = stocked(3)
    lane.reserve("r1", quantity=2)
    assert lane.release("r1") == {"status": "released", "reservation_id": "r1", "quantity": 2}
    assert lane.release("r1") == {"status": "released", "reservation_id": "r1", "quantity": 2}
    assert level(lane) == (3, 0, 3)
    assert lane.alarms == {}
    assert lane.kinds() == [subjects.INVENTORY_RESERVED, subjects.INVENTORY_RELEASED]


def test_releasing_a_committed_reservation_is_refused() -> None:
    lane = stocked(3)
    lane.reserve("r1")
    lane.commit("r1")
    assert lane.refused(ReleaseReservation(product_id=lane.key, reservation_id="r1")).code == "reservation_committed"


def test_a_release_before_its_reserve_stops_the_reserve_from_holding() -> None:
    """A saga that gave up on a reserve releases it; if the reserve arrives after all, it holds nothing."""
    lane = stocked(3)
    assert lane.release("late")["quantity"] == 0
    assert lane.refused(lane.reserve_cmd("late")).code == "reservation_closed"
    assert level(lane) == (3, 0, 3)


# -- restock, set stock, init ---------------------------------------------------------------


def test_restock_adds_and_reports_the_levels() -> None:
    lane = stocked(2)
    lane.reserve("r1")
    assert lane.restock(5) == {"product_id": lane.key, "on_hand": 7, "reserved": 1, "available": 6}
    assert lane.events[-1].subject == subjects.INVENTORY_STOCK_CHANGED and lane.events[-1].reason == "restocked"


def test_restock_may_not_pass_the_ceiling() -> None:
    lane = Lane(stock=Stock(on_hand=MAX_ON_HAND - 1))
    refusal = lane.refused(Restock(product_id=lane.key, quantity=2))
    assert refusal.code == "validation_failed"
    lane.restock(1)
    assert lane.stock.on_hand == MAX_ON_HAND


def test_set_stock_sets_on_hand() -> None:
    lane = stocked(2)
    assert lane.send(SetStock(product_id=lane.key, on_hand=40))["available"] == 40
    assert lane.events[-1].reason == "set"


def test_set_stock_below_what_is_reserved_is_refused() -> None:
    lane = stocked(10)
    lane.reserve("r1", quantity=4)
    refusal = lane.refused(SetStock(product_id=lane.key, on_hand=3))
    assert refusal.code == "below_reserved" and refusal.details == {"reserved": 4, "on_hand": 10}
    assert lane.send(SetStock(product_id=lane.key, on_hand=4))["available"] == 0
    assert lane.kinds()[-2:] == [subjects.INVENTORY_STOCK_CHANGED, subjects.INVENTORY_OUT_OF_STOCK]


def test_init_gives_a_new_product_its_initial_stock_once() -> None:
    lane = Lane()
    reply = lane.send(InitStock(product_id=lane.key, stock=7, tenant="shop-a"))
    assert reply == {"product_id": lane.key, "on_hand": 7, "reserved": 0, "available": 7}
    assert lane.events[-1].reason == "created" and lane.events[-1].tenant == "shop-a"
    lane.send(InitStock(product_id=lane.key, stock=7))
    assert lane.stock.on_hand == 7 and len(lane.events) == 1


def test_init_without_stock_writes_a_zero_row() -> None:
    lane = Lane()
    outcome = lane.apply(lane.command(InitStock.kind, InitStock(product_id=lane.key).model_dump(mode="json")))
    assert outcome.state is not None and outcome.state.initialized and outcome.state.on_hand == 0


def test_init_keeps_stock_an_admin_added_before_it() -> None:
    lane = stocked(3)
    lane.send(InitStock(product_id=lane.key, stock=5))
    assert lane.stock.on_hand == 8


# -- bounds and decoding ------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [0, -1, 10_001, 1.5, "1", True, None])
def test_reserve_quantity_must_be_an_integer_from_1_to_10000(quantity: Any) -> None:
    lane = stocked(5)
    body = {"product_id": lane.key, "reservation_id": "r1", "order_id": "o1", "quantity": quantity}
    with pytest.raises(DomainError) as refusal:
        lane.apply(lane.command(ReserveStock.kind, body))
    assert refusal.value.code == "validation_failed"
    assert refusal.value.details["fields"][0]["field"] == "quantity"
    assert level(lane) == (5, 0, 5)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (Restock.kind, {"quantity": 0}),
        (Restock.kind, {"quantity": 10_001}),
        (SetStock.kind, {"on_hand": -1}),
        (SetStock.kind, {"on_hand": MAX_ON_HAND + 1}),
        (SetStock.kind, {"on_hand": "5"}),
        (ReserveStock.kind, {"reservation_id": "r1", "order_id": "o1", "quantity": 1, "ttl_seconds": 0}),
        (ReserveStock.kind, {"reservation_id": "has space", "order_id": "o1", "quantity": 1}),
        (CommitReservation.kind, {}),
    ],
)
def test_out_of_bounds_values_are_refused(kind: str, body: dict[str, Any]) -> None:
    lane = stocked(5)
    with pytest.raises(DomainError) as refusal:
        lane.apply(lane.command(kind, {"product_id": lane.key, **body}))
    assert refusal.value.code == "validation_failed"


def test_the_quantity_bounds_are_inclusive() -> None:
    lane = stocked(10_000)
    lane.reserve("big", quantity=10_000)
    assert lane.stock.available == 0


def test_an_unknown_command_kind_is_refused() -> None:
    lane = Lane()
    with pytest.raises(DomainError) as refusal:
        lane.apply(lane.command("teleport", {"product_id": lane.key}))
    assert refusal.value.code == "validation_failed"


def test_a_command_for_another_product_is_refused() -> None:
    lane = stocked(5)
    with pytest.raises(DomainError):
        lane.apply(lane.command(Restock.kind, Restock(product_id="other", quantity=1).model_dump(mode="json")))


# -- purity -------------------------------------------------------------------------------


def test_applying_the_same_command_twice_gives_the_same_outcome() -> None:
    """The runtime may apply a batch again after its transaction failed: events keep their ids."""
    lane = stocked(5)
    command = lane.command(ReserveStock.kind, lane.reserve_cmd("r1").model_dump(mode="json"))
    first, second = domain.handle(lane.stock, command), domain.handle(lane.stock, command)
    assert first.reply == second.reply and first.state == second.state and first.alarms == second.alarms
    assert [e.model_dump() for e in first.events] == [e.model_dump() for e in second.events]


def test_handlers_never_change_the_state_they_are_given() -> None:
    lane = stocked(5)
    lane.reserve("r0")
    given = lane.stock
    snapshot = given.model_dump()
    lane.reserve("r1")
    lane.commit("r0")
    lane.release("r1")
    assert given.model_dump() == snapshot


def test_the_stored_state_reads_back_and_its_counts_alone() -> None:
    lane = stocked(5)
    lane.reserve("r1", quantity=2)
    stored = lane.stock.model_dump_json()
    assert Stock.model_validate_json(stored) == lane.stock
    assert Counts.model_validate_json(stored).level(lane.key) == StockLevel(
        product_id=lane.key, on_hand=5, reserved=2, available=3
    )


def test_every_event_of_a_change_carries_the_stock_version_it_made() -> None:
    lane = Lane(stock=Stock(on_hand=5, initialized=True, version=41))
    lane.reserve("r1", quantity=5)  # reserved, and the last unit went: out_of_stock too
    assert lane.stock.version == 42
    assert len(lane.events) == 2 and all(e.version == 42 for e in lane.events)
