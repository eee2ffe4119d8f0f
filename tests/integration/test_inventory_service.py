"""The inventory service on its lane, against a real nats-server and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from sqlalchemy import select

from cartwheel import subjects
from cartwheel.bus import request, unwrap
from cartwheel.contracts.catalog import Product, ProductCreated
from cartwheel.contracts.inventory import (
    CommitReservation,
    GetStock,
    GetStocks,
    ReserveStock,
    Restock,
    SetStock,
    StockCommand,
)
from cartwheel.db import Database
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.lanes.client import LaneClient
from cartwheel.lanes.store import load_states
from cartwheel.outbox import OutboxEvent
from cartwheel.service import Service
from services.inventory.handlers import InventoryHandlers
from tests.integration.conftest import Client, ServiceThread, settings_for

LANE = subjects.INVENTORY_LANE
FIRST_CALL = 20.0  # the first command waits for the new service to take its partitions


@pytest.fixture
def inventory(start_service: Callable[..., ServiceThread], database_url: str, client: Client) -> ServiceThread:
    async def fresh_lane(nc: nats.NATS) -> None:
        js = nc.jetstream()
        for remove in (js.delete_stream(subjects.lane_stream(LANE)), js.delete_key_value(subjects.lane_bucket(LANE))):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await remove

    client.run(fresh_lane)  # tests share one NATS: no commands or leases of an earlier test may linger
    return start_service("inventory", inventory_database_url=database_url)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


def new_product() -> str:
    return str(uuid.uuid4())


async def send(lane: LaneClient, cmd: StockCommand, timeout: float = 3.0) -> Any:
    return await lane.call(cmd.product_id, cmd.kind, cmd.model_dump(mode="json"), command_id=cmd.id, timeout=timeout)


async def started_lane(nc: nats.NATS) -> LaneClient:
    return await LaneClient(nc, LANE).start()


async def stocked(lane: LaneClient, on_hand: int) -> str:
    product_id = new_product()
    await send(lane, SetStock(product_id=product_id, on_hand=on_hand), timeout=FIRST_CALL)
    return product_id


def reserve(product_id: str, reservation_id: str | None = None, quantity: int = 1, ttl: int = 600) -> ReserveStock:
    return ReserveStock(
        product_id=product_id,
        reservation_id=reservation_id or uuid.uuid4().hex,
        order_id=f"order-{uuid.uuid4().hex[:8]}",
        quantity=quantity,
        ttl_seconds=ttl,
    )


def stored(db: Database, product_id: str) -> dict[str, Any]:
    return json.loads(db.read_sync(lambda s: load_states(s, LANE, [product_id]))[product_id])


def events(db: Database, product_id: str) -> list[dict[str, Any]]:
    rows = db.read_sync(lambda s: list(s.execute(select(OutboxEvent.subject, OutboxEvent.payload))))
    found = [{"subject": subject, **json.loads(payload)} for subject, payload in rows]
    return [event for event in found if event.get("product_id") == product_id]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_flash_sale_sells_exactly_the_stock(inventory: ServiceThread, client: Client, db: Database) -> None:
    async def scenario(nc: nats.NATS) -> tuple[str, Counter[str], dict[str, Any]]:
        lane = await started_lane(nc)
        product_id = await stocked(lane, 100)

        async def attempt() -> str:
            try:
                await send(lane, reserve(product_id), timeout=60)
                return "reserved"
            except DomainError as refusal:
                assert refusal.code != "out_of_stock" or refusal.details["available"] == 0
                return refusal.code

        outcomes = Counter(await asyncio.gather(*(attempt() for _ in range(2000))))
        level = await request(nc, GetStock(product_id=product_id), timeout=5)
        await lane.close()
        return product_id, outcomes, level

    product_id, outcomes, level = client.run(scenario)
    assert outcomes == {"reserved": 100, "out_of_stock": 1900}
    assert level == {"product_id": product_id, "on_hand": 100, "reserved": 100, "available": 0}
    state = stored(db, product_id)
    assert (state["on_hand"], state["reserved"], len(state["reservations"])) == (100, 100, 100)
    kinds = Counter(event["subject"] for event in events(db, product_id))
    assert kinds[subjects.INVENTORY_RESERVED] == 100 and kinds[subjects.INVENTORY_OUT_OF_STOCK] == 1


def test_a_repeated_command_id_has_one_effect_and_the_first_reply(
    inventory: ServiceThread, client: Client, db: Database
) -> None:
    async def scenario(nc: nats.NATS) -> tuple[str, list[Any], list[Any], Any]:
        lane = await started_lane(nc)
        product_id = await stocked(lane, 10)
        cmd = reserve(product_id, quantity=3)
        # The same command from ten callers at once (say, gateway workers retrying one request).
        callers = [await started_lane(nc) for _ in range(10)]
        same_id = await asyncio.gather(*(send(caller, cmd) for caller in callers))
        for caller in callers:
            await caller.close()
        # The same reservation under new command ids (a saga retrying): still one hold.
        fresh_ids = [await send(lane, cmd.model_copy(update={"id": str(uuid.uuid4())})) for _ in range(3)]
        restock = Restock(product_id=product_id, quantity=5)
        restocks = [await send(lane, restock) for _ in range(3)]
        await lane.close()
        return product_id, same_id, fresh_ids, restocks

    product_id, same_id, fresh_ids, restocks = client.run(scenario)
    assert all(reply == same_id[0] for reply in same_id + fresh_ids)
    assert all(reply == restocks[0] for reply in restocks)
    assert restocks[0] == {"product_id": product_id, "on_hand": 15, "reserved": 3, "available": 12}
    state = stored(db, product_id)
    assert (state["on_hand"], state["reserved"]) == (15, 3)
    assert Counter(e["subject"] for e in events(db, product_id))[subjects.INVENTORY_RESERVED] == 1


def test_an_expired_reservation_gives_its_stock_back(inventory: ServiceThread, client: Client, db: Database) -> None:
    async def scenario(nc: nats.NATS) -> tuple[str, str]:
        lane = await started_lane(nc)
        product_id = await stocked(lane, 2)
        held = reserve(product_id, quantity=2, ttl=1)
        await send(lane, held)
        await lane.close()
        return product_id, held.reservation_id

    product_id, reservation_id = client.run(scenario)
    wait_until(lambda: stored(db, product_id)["reserved"] == 0, "the reservation expired", timeout=10)
    state = stored(db, product_id)
    assert state["on_hand"] == 2 and state["ended"][reservation_id]["status"] == "expired"
    assert subjects.INVENTORY_EXPIRED in [e["subject"] for e in events(db, product_id)]

    async def commit_late(nc: nats.NATS) -> DomainError:
        lane = await started_lane(nc)
        with pytest.raises(DomainError) as refusal:
            await send(lane, CommitReservation(product_id=product_id, reservation_id=reservation_id))
        again = await send(lane, reserve(product_id, quantity=2))  # the units sell again
        assert again["status"] == "reserved"
        await lane.close()
        return refusal.value

    assert client.run(commit_late).code == "reservation_expired"


def test_expiry_racing_a_commit_settles_each_reservation_one_way(
    inventory: ServiceThread, client: Client, db: Database
) -> None:
    """Commits sent around the moment of expiry: whichever the lane applies first wins, never both."""

    async def scenario(nc: nats.NATS) -> list[tuple[str, str, str]]:
        lane = await started_lane(nc)
        products = [await stocked(lane, 5) for _ in range(12)]
        holds = [reserve(p, quantity=2, ttl=1) for p in products]
        await asyncio.gather(*(send(lane, h) for h in holds))

        async def commit(hold: ReserveStock, delay: float) -> tuple[str, str, str]:
            await asyncio.sleep(delay)
            try:
                await send(lane, CommitReservation(product_id=hold.product_id, reservation_id=hold.reservation_id))
                return hold.product_id, hold.reservation_id, "committed"
            except DomainError as refusal:
                return hold.product_id, hold.reservation_id, refusal.code

        delays = [0.6 + 0.1 * n for n in range(len(holds))]  # from well before to well after the alarm
        results = await asyncio.gather(*(commit(h, d) for h, d in zip(holds, delays, strict=True)))
        await lane.close()
        return results

    results = client.run(scenario)
    assert {outcome for _, _, outcome in results} <= {"committed", "reservation_expired"}
    assert results[0][2] == "committed"  # 0.6 s: the alarm isn't due yet
    wait_until(lambda: all(stored(db, p)["reserved"] == 0 for p, _, _ in results), "every reservation settled")
    for product_id, reservation_id, outcome in results:
        state = stored(db, product_id)
        kinds = [e["subject"] for e in events(db, product_id)]
        if outcome == "committed":
            assert state["on_hand"] == 3 and state["ended"][reservation_id]["status"] == "committed"
            assert subjects.INVENTORY_EXPIRED not in kinds
        else:
            assert state["on_hand"] == 5 and state["ended"][reservation_id]["status"] == "expired"
            assert subjects.INVENTORY_COMMITTED not in kinds


@pytest.mark.parametrize("quantity", [0, -1, 10_001, 1.5, "1", True, None])
def test_invalid_quantities_are_refused_and_change_nothing(
    inventory: ServiceThread, client: Client, db: Database, quantity: Any
) -> None:
    async def scenario(nc: nats.NATS) -> tuple[str, list[DomainError]]:
        lane = await started_lane(nc)
        product_id = await stocked(lane, 5)
        body = {"product_id": product_id, "reservation_id": "r1", "order_id": "o1", "quantity": quantity}
        refusals = []
        with pytest.raises(DomainError) as refusal:
            await lane.call(product_id, ReserveStock.kind, body)
        refusals.append(refusal.value)
        raw = json.dumps({"product_id": product_id, "quantity": quantity}).encode()
        with pytest.raises(DomainError) as refusal:
            unwrap((await nc.request(subjects.INVENTORY_RESTOCK, raw, timeout=5)).data, subjects.INVENTORY_RESTOCK)
        refusals.append(refusal.value)
        await lane.close()
        return product_id, refusals

    product_id, refusals = client.run(scenario)
    assert [r.code for r in refusals] == ["validation_failed", "validation_failed"]
    assert all(any(f["field"].endswith("quantity") for f in r.details["fields"]) for r in refusals)
    state = stored(db, product_id)
    assert (state["on_hand"], state["reserved"]) == (5, 0)


def test_admin_commands_and_queries_over_request_reply(inventory: ServiceThread, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        lane = await started_lane(nc)
        product_id = await stocked(lane, 0)
        assert (await request(nc, Restock(product_id=product_id, quantity=8), timeout=10))["on_hand"] == 8
        await send(lane, reserve(product_id, quantity=6))
        with pytest.raises(DomainError) as refusal:
            await request(nc, SetStock(product_id=product_id, on_hand=5), timeout=10)
        assert refusal.value.code == "below_reserved" and refusal.value.details["reserved"] == 6
        level = await request(nc, SetStock(product_id=product_id, on_hand=6), timeout=10)
        assert level == {"product_id": product_id, "on_hand": 6, "reserved": 6, "available": 0}
        unknown = new_product()
        many = await request(nc, GetStocks(product_ids=[unknown, product_id]), timeout=5)
        assert many["items"] == [
            {"product_id": unknown, "on_hand": 0, "reserved": 0, "available": 0},
            {"product_id": product_id, "on_hand": 6, "reserved": 6, "available": 0},
        ]
        await lane.close()

    client.run(scenario)


def test_too_many_products_in_one_query_is_refused(inventory: ServiceThread, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> dict[str, Any]:
        body = json.dumps({"product_ids": [new_product() for _ in range(501)]}).encode()
        return json.loads((await nc.request(subjects.INVENTORY_STOCKS_GET, body, timeout=5)).data)

    reply = client.run(scenario)
    assert reply["ok"] is False and reply["error"]["code"] == "validation_failed"


def test_a_created_product_gets_a_stock_row_once(inventory: ServiceThread, client: Client, db: Database) -> None:
    now = datetime.now(UTC)
    product = Product(
        id=new_product(), sku=f"sku-{uuid.uuid4().hex[:8]}", name="Mug", description="", price_cents=900,
        currency="EUR", active=True, version=1, created_at=now, updated_at=now,
    )  # fmt: skip
    bare = Product.model_validate({**product.model_dump(), "id": new_product()})
    created = ProductCreated(product=product, stock=12)

    client.run(lambda nc: nc.jetstream().publish(created.subject, created.model_dump_json().encode()))
    wait_until(lambda: product.id in db.read_sync(lambda s: load_states(s, LANE, [product.id])), "a stock row")
    assert stored(db, product.id)["on_hand"] == 12
    # The same event delivered again (a redelivery, or a relay that published it twice): no second stock.
    client.run(lambda nc: nc.jetstream().publish(created.subject, created.model_dump_json().encode()))
    without_stock = ProductCreated(product=bare)
    client.run(lambda nc: nc.jetstream().publish(without_stock.subject, without_stock.model_dump_json().encode()))
    wait_until(lambda: bare.id in db.read_sync(lambda s: load_states(s, LANE, [bare.id])), "a zero row")
    assert stored(db, bare.id)["on_hand"] == 0
    assert stored(db, product.id)["on_hand"] == 12
    changed = [e for e in events(db, product.id) if e["subject"] == subjects.INVENTORY_STOCK_CHANGED]
    assert len(changed) == 1 and changed[0]["reason"] == "created"


class SilentLane:
    """A lane client whose lane doesn't answer, or refuses."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "redelivered"),
    [(ServiceUnavailable("inventory.cmd.x", "no reply"), True), (DomainError("no", code="internal_error"), False)],
)
def test_a_product_event_comes_again_only_while_the_lane_is_unavailable(
    tmp_path: Path, error: Exception, redelivered: bool
) -> None:
    service = Service("inventory", settings_for("nats://127.0.0.1:1", tmp_path))
    handlers = InventoryHandlers(service)
    handlers.lane = SilentLane(error)  # type: ignore[assignment]
    now = datetime.now(UTC)
    product = Product(
        id=new_product(), sku="s", name="n", description="", price_cents=1, currency="EUR", active=True, version=1,
        created_at=now, updated_at=now,
    )  # fmt: skip
    track = handlers.track_product(ProductCreated(product=product))
    if redelivered:  # the consumer raises, so JetStream delivers the event again
        with pytest.raises(ServiceUnavailable):
            asyncio.run(track)
    else:  # a refusal would be the same next time: logged and acknowledged
        asyncio.run(track)
    with pytest.raises(DomainError) as refusal:
        asyncio.run(handlers.send(Restock(product_id=product.id, quantity=1)))
    assert refusal.value.code == ("service_unavailable" if redelivered else "internal_error")
    service.db.close()
