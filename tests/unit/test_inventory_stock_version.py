"""Every change of a product's stock gets the next version, so copies elsewhere can keep the newest."""

from __future__ import annotations

from cartwheel.contracts.inventory import SetStock
from services.inventory.state import Counts
from tests.unit.test_inventory_domain import Lane, stocked


def test_each_change_is_one_version_more_and_a_refusal_none() -> None:
    lane = stocked(5)
    assert lane.stock.version == 1
    lane.reserve("r1", 2)
    lane.commit("r1")
    assert lane.stock.version == 3
    lane.reserve("r2", 1)
    lane.refused(lane.reserve_cmd("r3", 10))
    lane.refused(SetStock(product_id=lane.key, on_hand=0))  # below what is reserved
    assert lane.stock.version == 4


def test_an_alarm_that_releases_is_a_change() -> None:
    lane = stocked(2)
    lane.reserve("r1", 1, ttl=1)
    before = lane.stock.version
    lane.now = lane.now.replace(minute=lane.now.minute + 1)
    lane.fire_due_alarms()
    assert lane.stock.version == before + 1 and lane.stock.available == 2


def test_queries_read_the_version_with_the_numbers() -> None:
    lane = Lane()
    lane.send(SetStock(product_id=lane.key, on_hand=4))
    counts = Counts.model_validate_json(lane.stock.model_dump_json())
    assert (counts.on_hand, counts.version) == (4, 1)
