"""Stock in a KV bucket on a real nats-server: inventory writes it forward only, repairs it, and the gateway's and
the cart's live copies serve it (and the catalog's products) without asking the services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from cartwheel import bus, subjects
from cartwheel.bus import request
from cartwheel.contracts.cart import AddToCart
from cartwheel.contracts.catalog import CreateProduct, GetProduct, ProductDraft, ProductPatch, UpdateProduct
from cartwheel.contracts.inventory import GetStock, Restock
from cartwheel.errors import DomainError
from cartwheel.settings import Settings
from services.gateway.bridge import NatsBridge
from services.inventory.availability import StockBoard, StockEntry
from tests.helpers import random_sku
from tests.integration.conftest import Client, ServiceThread, settings_for

TIMEOUT = 10.0


async def fresh_lanes(nc: nats.NATS) -> None:
    """Lane streams of earlier tests would be replayed into this test's empty databases."""
    js = nc.jetstream()
    for lane in ("cart", "inventory"):
        for remove in (js.delete_stream(subjects.lane_stream(lane)), js.delete_key_value(subjects.lane_bucket(lane))):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await remove


@pytest.fixture
def services(start_service: Callable[..., ServiceThread], client: Client) -> Callable[..., ServiceThread]:
    client.run(fresh_lanes)
    return start_service


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> Settings:
    return settings_for(nats_url, tmp_path, request_timeout=2.0)


@pytest.fixture
def bridge(settings: Settings) -> Iterator[NatsBridge]:
    bridge = NatsBridge(settings)
    bridge.start(wait=10)
    yield bridge
    bridge.close()


async def new_product(nc: nats.NATS, stock: int) -> str:
    draft = ProductDraft(sku=random_sku(), name="Kettle", price_cents=2500, currency="EUR", stock=stock)
    return str((await request(nc, CreateProduct(draft=draft), TIMEOUT))["id"])


async def entry(nc: nats.NATS, product_id: str) -> dict[str, Any] | None:
    kv = await nc.jetstream().key_value(subjects.INVENTORY_STOCK_BUCKET)
    try:
        found = await kv.get(subjects.inventory_stock_key("default", product_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    return dict(json.loads(found.value or b"{}"))


async def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def entry_with(nc: nats.NATS, product_id: str, **wanted: int) -> dict[str, Any]:
    async def matches() -> dict[str, Any] | None:
        found = await entry(nc, product_id)
        return found if found and all(found[k] == v for k, v in wanted.items()) else None

    return dict(await until(matches))


def test_a_stock_change_reaches_the_bucket_the_gateway_and_the_cart(
    services: Callable[..., ServiceThread], client: Client, bridge: NatsBridge
) -> None:
    services("catalog")
    inventory = services("inventory")
    services("cart")
    product_id = client.run(lambda nc: new_product(nc, stock=5))
    first = client.run(lambda nc: entry_with(nc, product_id, available=5))
    assert first["on_hand"] == 5 and first["reserved"] == 0 and first["version"] >= 1

    client.run(lambda nc: request(nc, Restock(product_id=product_id, quantity=3), TIMEOUT))
    second = client.run(lambda nc: entry(nc, product_id)) or {}  # an admin's change is there before the answer
    assert second["available"] == 8 and second["version"] > first["version"]

    key = subjects.inventory_stock_key("default", product_id)
    bridge.kv_get(subjects.INVENTORY_STOCK_BUCKET, key)  # starts the worker's copy
    mirror = bridge.mirror(subjects.INVENTORY_STOCK_BUCKET)
    assert mirror is not None
    deadline = time.monotonic() + 10
    while not (mirror.synced and mirror.get(key)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads(mirror.get(key) or b"{}")["available"] == 8

    inventory.stop()  # from here on, only the copies know the stock
    raw = bridge.kv_get(subjects.INVENTORY_STOCK_BUCKET, key)
    assert raw is not None and json.loads(raw)["available"] == 8

    async def cart_adds(nc: nats.NATS) -> None:
        cart = uuid.uuid4().hex
        added = await until(lambda: _try(request(nc, AddToCart(cart_id=cart, product_id=product_id, quantity=8),
                                                 TIMEOUT)))
        assert added["item_count"] == 8
        with pytest.raises(DomainError) as caught:
            await request(nc, AddToCart(cart_id=cart, product_id=product_id, quantity=1), TIMEOUT)
        assert caught.value.code == "out_of_stock" and caught.value.details["available"] == 8

    client.run(cart_adds)


async def _try(work: Any) -> Any:
    """The reply, or None while the cart's copy lacks the stock (inventory is down, so asking it fails)."""
    try:
        return await work
    except DomainError as error:
        if error.code != "service_unavailable":
            raise
        return None


def test_an_older_stock_never_overwrites_a_newer(client: Client, settings: Settings) -> None:
    async def scenario(nc: nats.NATS) -> None:
        js = nc.jetstream()
        await bus.declare_topology(js, settings)
        kv = await js.key_value(subjects.INVENTORY_STOCK_BUCKET)
        product_id = uuid.uuid4().hex

        def at(version: int) -> StockEntry:
            return StockEntry(product_id=product_id, on_hand=version, reserved=0, available=version, version=version)

        one, other = StockBoard(kv), StockBoard(kv)
        assert await one.write("default", at(2))
        assert not await other.write("default", at(1))  # knew nothing, looked, found newer
        assert (await entry(nc, product_id) or {})["version"] == 2
        assert await other.write("default", at(3))
        assert await one.write("default", at(4))  # its own memory is stale (revision moved): it looks again
        assert not await one.write("default", at(3))
        assert (await entry(nc, product_id) or {})["version"] == 4

        # Many writers racing with versions in random order: the highest stays.
        versions = list(range(5, 45))
        random.shuffle(versions)
        boards = [StockBoard(kv) for _ in range(8)]
        await asyncio.gather(*(boards[i % 8].write("default", at(v)) for i, v in enumerate(versions)))
        assert (await entry(nc, product_id) or {})["version"] == 44

    client.run(scenario)


def test_a_deactivated_product_is_refused_by_cart_add(
    services: Callable[..., ServiceThread], client: Client
) -> None:
    catalog = services("catalog")
    services("inventory")
    services("cart")

    async def deactivate(nc: nats.NATS) -> tuple[str, str]:
        cart = uuid.uuid4().hex
        kept, hidden = await new_product(nc, stock=5), await new_product(nc, stock=5)
        await entry_with(nc, kept, available=5)
        await entry_with(nc, hidden, available=5)
        await request(nc, AddToCart(cart_id=cart, product_id=hidden, quantity=1), TIMEOUT)
        await request(nc, UpdateProduct(product_id=hidden, patch=ProductPatch(active=False)), TIMEOUT)

        async def refused() -> str | None:  # once the cart's copy has the change (a millisecond or so)
            try:
                await request(nc, AddToCart(cart_id=cart, product_id=hidden, quantity=1), TIMEOUT)
            except DomainError as refusal:
                return refusal.code
            return None

        assert await until(refused) == "not_found"
        return kept, hidden

    kept, hidden = client.run(deactivate)
    catalog.stop()  # from here on, only the cart's copy of the catalog's cache knows the products

    async def without_catalog(nc: nats.NATS) -> None:
        with pytest.raises(DomainError) as caught:
            await request(nc, AddToCart(cart_id=uuid.uuid4().hex, product_id=hidden, quantity=1), TIMEOUT)
        assert caught.value.code == "not_found"
        added = await request(nc, AddToCart(cart_id=uuid.uuid4().hex, product_id=kept, quantity=2), TIMEOUT)
        assert added["item_count"] == 2

    client.run(without_catalog)


def test_an_emptied_bucket_is_filled_again_at_start(
    services: Callable[..., ServiceThread], client: Client, settings: Settings
) -> None:
    services("catalog")
    inventory = services("inventory")
    product_id = client.run(lambda nc: new_product(nc, stock=4))
    client.run(lambda nc: entry_with(nc, product_id, available=4))
    inventory.stop()

    async def empty_bucket(nc: nats.NATS) -> None:
        js = nc.jetstream()
        await js.delete_key_value(subjects.INVENTORY_STOCK_BUCKET)
        await bus.declare_topology(js, settings)
        assert await entry(nc, product_id) is None

    client.run(empty_bucket)
    services("inventory")
    assert client.run(lambda nc: entry_with(nc, product_id, available=4))["on_hand"] == 4


def test_a_lost_write_comes_back_with_the_event(
    services: Callable[..., ServiceThread], client: Client, settings: Settings
) -> None:
    services("catalog")
    services("inventory")
    product_id = client.run(lambda nc: new_product(nc, stock=4))
    client.run(lambda nc: entry_with(nc, product_id, available=4))

    async def lose_a_write(nc: nats.NATS) -> None:
        js = nc.jetstream()
        await js.delete_key_value(subjects.INVENTORY_STOCK_BUCKET)  # the restock's entry can't be written
        await request(nc, Restock(product_id=product_id, quantity=2), TIMEOUT)
        await asyncio.sleep(1.5)  # the write fails and the event is handed back
        await bus.declare_topology(js, settings)
        found = await entry_with(nc, product_id, available=6)  # the redelivered event writes it
        assert found["on_hand"] == 6

    client.run(lose_a_write)


def test_a_stock_query_puts_a_missing_entry_back(services: Callable[..., ServiceThread], client: Client) -> None:
    services("catalog")
    services("inventory")

    async def scenario(nc: nats.NATS) -> None:
        product_id = await new_product(nc, stock=3)
        await entry_with(nc, product_id, available=3)
        kv = await nc.jetstream().key_value(subjects.INVENTORY_STOCK_BUCKET)
        await kv.purge(subjects.inventory_stock_key("default", product_id))
        assert await entry(nc, product_id) is None
        level = await request(nc, GetStock(product_id=product_id), TIMEOUT)
        assert level == {"product_id": product_id, "on_hand": 3, "reserved": 0, "available": 3}
        assert (await entry_with(nc, product_id, available=3))["on_hand"] == 3

    client.run(scenario)


def test_the_gateway_reads_products_and_their_changes_from_its_copy_of_the_catalog_bucket(
    services: Callable[..., ServiceThread], client: Client, bridge: NatsBridge
) -> None:
    catalog = services("catalog")
    product_id = client.run(lambda nc: new_product(nc, stock=5))
    client.run(lambda nc: request(nc, GetProduct(id_or_sku=product_id), TIMEOUT))  # a read fills the bucket
    key = subjects.catalog_cache_key("default", product_id)
    bridge.kv_get(subjects.CATALOG_CACHE_BUCKET, key)  # starts the worker's copy
    _until_local(bridge)
    client.run(lambda nc: request(nc, UpdateProduct(product_id=product_id, patch=ProductPatch(price_cents=777)),
                                  TIMEOUT))
    assert json.loads(bridge.kv_get(subjects.CATALOG_CACHE_BUCKET, key) or b"{}")["price_cents"] == 777
    catalog.stop()  # from here on, only the copy (and the bucket) know the product
    assert json.loads(bridge.kv_get(subjects.CATALOG_CACHE_BUCKET, key) or b"{}")["price_cents"] == 777


def test_a_busy_worker_never_serves_a_product_older_than_a_change_already_answered(
    services: Callable[..., ServiceThread], client: Client, bridge: NatsBridge
) -> None:
    """Another worker answered the admin's change; this one was busy and its copy had not heard of it yet.

    The read must still show the change: it waits until the copy holds what the bucket held when
    the read began. Without that, the copy's old product is served (read-your-writes broken).
    """
    services("catalog")
    product_id = client.run(lambda nc: new_product(nc, stock=5))
    client.run(lambda nc: request(nc, GetProduct(id_or_sku=product_id), TIMEOUT))
    key = subjects.catalog_cache_key("default", product_id)
    bridge.kv_get(subjects.CATALOG_CACHE_BUCKET, key)
    _until_local(bridge)
    loop = bridge._loop
    assert loop is not None
    for price in (301, 302, 303):
        loop.call_soon_threadsafe(time.sleep, 0.3)  # the worker's loop is busy: the watch's update waits
        client.run(lambda nc, price=price: request(
            nc, UpdateProduct(product_id=product_id, patch=ProductPatch(price_cents=price)), TIMEOUT))
        assert json.loads(bridge.kv_get(subjects.CATALOG_CACHE_BUCKET, key) or b"{}")["price_cents"] == price
    assert bridge.kv_is_local(subjects.CATALOG_CACHE_BUCKET)  # still read from the copy, not around it


def _until_local(bridge: NatsBridge) -> bool:
    deadline = time.monotonic() + 10
    while not bridge.kv_is_local(subjects.CATALOG_CACHE_BUCKET):
        assert time.monotonic() < deadline, "the gateway's copy of the catalog bucket never synced"
        time.sleep(0.02)
    return True

