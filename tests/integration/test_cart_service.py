"""The cart service with the real catalog and inventory on a real nats-server (cart on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import nats
import nats.js.errors
import pytest

from cartwheel import subjects
from cartwheel.bus import request
from cartwheel.contracts.cart import AddToCart, ChangeQuantity, GetCart, ListCarts, RemoveFromCart
from cartwheel.contracts.catalog import CreateProduct, ProductDraft, ProductPatch, UpdateProduct
from cartwheel.errors import DomainError
from tests.helpers import random_sku
from tests.integration.conftest import Client

TIMEOUT = 10.0


@pytest.fixture
def shop(database_url: str, start_service, client: Client):
    """Catalog and inventory (SQLite in tmp) and the cart on the test's database, on fresh lanes."""

    async def fresh_lanes(nc: nats.NATS) -> None:
        js = nc.jetstream()
        for lane in ("cart", "inventory"):
            for remove in (
                js.delete_stream(subjects.lane_stream(lane)),
                js.delete_key_value(subjects.lane_bucket(lane)),
            ):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await remove

    client.run(fresh_lanes)
    start_service("catalog")
    start_service("inventory")
    return start_service("cart", cart_database_url=database_url, cart_abandon_seconds=1.0)


async def product(nc: nats.NATS, stock: int = 10, **fields: Any) -> dict[str, Any]:
    draft = ProductDraft.model_validate(
        {"sku": random_sku(), "name": "Mug", "price_cents": 1200, "currency": "EUR", "stock": stock, **fields}
    )
    made = await request(nc, CreateProduct(draft=draft), TIMEOUT)
    for _ in range(100):  # inventory creates the stock row from the product_created event
        level = await request(
            nc,
            __import__("cartwheel.contracts.inventory", fromlist=["GetStock"]).GetStock(product_id=made["id"]),
            TIMEOUT,
        )
        if level["on_hand"] == stock:
            return made
        await asyncio.sleep(0.05)
    raise AssertionError("inventory never got the product's stock")


def new_cart() -> str:
    return uuid.uuid4().hex


def test_concurrent_edits_from_many_tabs_lose_nothing(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        cart, mug = new_cart(), await product(nc, stock=100)
        others = [await product(nc) for _ in range(5)]
        adds = [AddToCart(cart_id=cart, product_id=mug["id"], quantity=1) for _ in range(20)]
        adds += [AddToCart(cart_id=cart, product_id=p["id"], quantity=2) for p in others]
        replies = await asyncio.gather(*(request(nc, a, TIMEOUT) for a in adds))
        final = await request(nc, GetCart(cart_id=cart), TIMEOUT)
        lines = {i["product_id"]: i["quantity"] for i in final["items"]}
        assert lines[mug["id"]] == 20 and all(lines[p["id"]] == 2 for p in others)
        assert final["item_count"] == 30 and final["total_cents"] == 30 * 1200
        # Each reply is the cart after its command, in lane order: item counts 1..25 steps, each seen once.
        assert sorted(r["item_count"] for r in replies) == sorted({r["item_count"] for r in replies})

    client.run(scenario)


def test_refusals_change_nothing(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        cart, mug = new_cart(), await product(nc, stock=3)
        usd = await product(nc, currency="USD")
        hidden = await product(nc)
        await request(nc, UpdateProduct(product_id=hidden["id"], patch=ProductPatch(active=False)), TIMEOUT)
        await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=2), TIMEOUT)
        before = await request(nc, GetCart(cart_id=cart), TIMEOUT)
        cases = [
            (AddToCart(cart_id=cart, product_id=mug["id"], quantity=2), "out_of_stock"),
            (AddToCart(cart_id=cart, product_id=usd["id"], quantity=1), "currency_mismatch"),
            (AddToCart(cart_id=cart, product_id=hidden["id"], quantity=1), "not_found"),
            (AddToCart(cart_id=cart, product_id="no-such-product", quantity=1), "not_found"),
            (ChangeQuantity(cart_id=cart, product_id=mug["id"], quantity=4), "out_of_stock"),
            (RemoveFromCart(cart_id=cart, product_id=usd["id"]), "not_found"),
        ]
        for message, code in cases:
            with pytest.raises(DomainError) as caught:
                await request(nc, message, TIMEOUT)
            assert caught.value.code == code, message
        for raw in ({"cart_id": cart, "product_id": mug["id"], "quantity": q} for q in (0, -1, 1000, "3", 3.5)):
            reply = json.loads((await nc.request(subjects.CART_ADD, json.dumps(raw).encode(), timeout=TIMEOUT)).data)
            assert reply["error"]["code"] == "validation_failed", raw
        assert await request(nc, GetCart(cart_id=cart), TIMEOUT) == before

    client.run(scenario)


def test_prices_are_snapshotted_at_add_time(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        cart, mug = new_cart(), await product(nc)
        await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=1), TIMEOUT)
        await request(nc, UpdateProduct(product_id=mug["id"], patch=ProductPatch(price_cents=9999)), TIMEOUT)
        await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=1), TIMEOUT)
        cart_now = await request(nc, GetCart(cart_id=cart), TIMEOUT)
        assert cart_now["items"][0]["unit_price_cents"] == 1200 and cart_now["total_cents"] == 2400
        emptied = await request(nc, ChangeQuantity(cart_id=cart, product_id=mug["id"], quantity=0), TIMEOUT)
        assert emptied["items"] == []

    client.run(scenario)


def test_an_untouched_cart_is_abandoned_and_a_change_revives_it(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        cart, mug = new_cart(), await product(nc)
        sub = await nc.subscribe(subjects.CART_ABANDONED)
        await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=1), TIMEOUT)
        deadline = time.monotonic() + 15
        status = "active"
        while status != "abandoned" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status = (await request(nc, GetCart(cart_id=cart), TIMEOUT))["status"]
        assert status == "abandoned"
        event = json.loads((await sub.next_msg(timeout=10)).data)
        assert event["cart"]["id"] == cart and event["cart"]["total_cents"] == 1200
        revived = await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=1), TIMEOUT)
        assert revived["status"] == "active" and revived["item_count"] == 2

    client.run(scenario)


def test_admins_list_carts_by_status(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        mug = await product(nc)
        carts = sorted(new_cart() for _ in range(3))
        for cart in carts:
            await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=1), TIMEOUT)
        everything = await request(nc, ListCarts(limit=2), TIMEOUT)
        assert [c["id"] for c in everything["items"]] == carts[:2] and everything["next_cursor"] == carts[1]
        rest = await request(nc, ListCarts(limit=2, after=everything["next_cursor"]), TIMEOUT)
        assert [c["id"] for c in rest["items"]] == carts[2:]
        deadline = time.monotonic() + 15  # abandoned after 1 s in this fixture
        abandoned: list[str] = []
        while len(abandoned) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            abandoned = [c["id"] for c in (await request(nc, ListCarts(status="abandoned"), TIMEOUT))["items"]]
        assert abandoned == carts
        assert (await request(nc, ListCarts(status="checked_out"), TIMEOUT))["items"] == []

    client.run(scenario)
