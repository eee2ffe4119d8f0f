"""The cart service with the real catalog and inventory on a real nats-server (cart on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import nats
import nats.js.errors
import pytest

from cartwheel import subjects
from cartwheel.bus import request
from cartwheel.contracts.cart import (
    CART_LANE,
    AddToCart,
    ChangeQuantity,
    GetCart,
    ListCarts,
    MergeCarts,
    MergeResult,
    RemoveFromCart,
    RemoveItem,
)
from cartwheel.contracts.catalog import CreateProduct, ProductDraft, ProductPatch, UpdateProduct
from cartwheel.contracts.inventory import GetStock, SetStock
from cartwheel.contracts.orders import OrderPaid, OrderView
from cartwheel.db import Database
from cartwheel.errors import DomainError
from cartwheel.lanes.client import LaneClient
from cartwheel.lanes.store import load_states
from cartwheel.natsauth import inbox_prefix
from tests.helpers import random_sku
from tests.integration.conftest import Client

TIMEOUT = 10.0


@pytest.fixture
def backends(start_service, client: Client) -> None:
    """Catalog and inventory (SQLite in tmp) on fresh lanes; each test starts the cart its way."""

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


@pytest.fixture
def shop(backends: None, database_url: str, start_service):
    """The backends and the cart on the test's database, abandoning carts after 1 s."""
    return start_service("cart", cart_database_url=database_url, cart_abandon_seconds=1.0)


async def product(nc: nats.NATS, stock: int = 10, **fields: Any) -> dict[str, Any]:
    draft = ProductDraft.model_validate(
        {"sku": random_sku(), "name": "Mug", "price_cents": 1200, "currency": "EUR", "stock": stock, **fields}
    )
    made = await request(nc, CreateProduct(draft=draft), TIMEOUT)
    for _ in range(100):  # inventory creates the stock row from the product_created event
        level = await request(
            nc,
            GetStock(product_id=made["id"]),
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


def test_the_carts_own_lane_worker_answers_its_requests_without_a_trip_through_nats(shop, client: Client) -> None:
    """The cart's lane client and the lane's workers share a process and a loop: a reply is handed over there, not
    published to the client's inbox and received back (a publish and a message fewer per change). A caller in
    another process is still answered through NATS."""

    async def scenario(nc: nats.NATS) -> None:
        cart, mug = new_cart(), await product(nc, stock=100)
        replies: list[str] = []

        async def heard(msg: nats.aio.msg.Msg) -> None:
            replies.append(msg.subject)

        sniffers = [await nc.subscribe(subjects.lane_replies(prefix, ">"), cb=heard)
                    for prefix in (inbox_prefix("cart"), "_INBOX")]  # the cart's inbox, and this process's
        await nc.flush()
        elsewhere = await LaneClient(nc, CART_LANE).start()
        remove = RemoveItem(id=uuid.uuid4().hex, cart_id=cart, product_id=mug["id"])
        with pytest.raises(DomainError):  # refused (not in the cart), and answered to this process over NATS
            await elsewhere.call(cart, remove.kind, remove.model_dump(mode="json"), command_id=remove.id)
        await nc.flush()
        await asyncio.sleep(0.2)  # the sniffer's callback runs in a task of its own
        assert len(replies) == 1, replies
        for _ in range(5):
            await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=1), TIMEOUT)
        assert (await request(nc, GetCart(cart_id=cart), TIMEOUT))["item_count"] == 5
        await nc.flush()
        await asyncio.sleep(0.2)
        assert len(replies) == 1, replies  # none of the five went through NATS
        await elsewhere.close()
        for sniffer in sniffers:
            await sniffer.unsubscribe()

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


def test_login_merges_the_anonymous_cart_once(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        anon, user = new_cart(), new_cart()
        shared, scarce, own = await product(nc, stock=50), await product(nc, stock=5), await product(nc)
        await request(nc, AddToCart(cart_id=user, product_id=shared["id"], quantity=2, email="a@example.test"), TIMEOUT)
        await request(nc, UpdateProduct(product_id=shared["id"], patch=ProductPatch(price_cents=1500)), TIMEOUT)
        for item, quantity in ((shared, 3), (scarce, 4), (own, 1)):
            await request(nc, AddToCart(cart_id=anon, product_id=item["id"], quantity=quantity), TIMEOUT)
        await request(nc, SetStock(product_id=scarce["id"], on_hand=2), TIMEOUT)  # sold elsewhere meanwhile
        merged_events = await nc.subscribe(subjects.CART_MERGED)
        merge = MergeCarts(source_cart_id=anon, target_cart_id=user, email="a@example.test")
        first = MergeResult.model_validate(await request(nc, merge, TIMEOUT))
        lines = {i.product_id: (i.quantity, i.unit_price_cents) for i in first.cart.items}
        # the user's 2 at 12.00 keep their price; 3 more join them; the scarce line is capped at what is left
        assert lines == {shared["id"]: (5, 1200), scarce["id"]: (2, 1200), own["id"]: (1, 1200)}
        assert [(a.product_id, a.requested, a.quantity, a.reason) for a in first.adjustments] == [
            (scarce["id"], 4, 2, "out_of_stock")]
        event = json.loads((await merged_events.next_msg(timeout=10)).data)
        assert (event["source_cart_id"], event["cart"]["id"], event["email"]) == (anon, user, "a@example.test")
        again = MergeResult.model_validate(await request(nc, MergeCarts(source_cart_id=anon, target_cart_id=user),
                                                         TIMEOUT))
        assert again.cart.items == first.cart.items  # a retried login moves nothing twice
        assert (await request(nc, GetCart(cart_id=anon), TIMEOUT))["status"] == "merged"
        with pytest.raises(DomainError) as closed:
            await request(nc, AddToCart(cart_id=anon, product_id=own["id"], quantity=1), TIMEOUT)
        assert closed.value.code == "cart_closed"

    client.run(scenario)


def test_a_paid_order_checks_its_cart_out_and_a_merge_into_it_moves_nothing(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        mug = await product(nc)
        user, anon = new_cart(), new_cart()
        await request(nc, AddToCart(cart_id=user, product_id=mug["id"], quantity=1, email="b@example.test"), TIMEOUT)
        await request(nc, AddToCart(cart_id=anon, product_id=mug["id"], quantity=3), TIMEOUT)
        now = datetime.now(UTC)
        order = OrderView(order_id="ord_cart_test", status="paid", lines=[], total_cents=1200, currency="EUR",
                          cart_id=user, created_at=now, updated_at=now)
        for _ in range(2):  # delivered twice: checked out once
            await nc.jetstream().publish(subjects.ORDERS_PAID, OrderPaid(order=order).model_dump_json().encode())
        for _ in range(400):  # up to 20 s: the event goes through JetStream to a consumer on a busy machine
            if (await request(nc, GetCart(cart_id=user), TIMEOUT))["status"] == "checked_out":
                break
            await asyncio.sleep(0.05)
        assert (await request(nc, GetCart(cart_id=user), TIMEOUT))["status"] == "checked_out"
        with pytest.raises(DomainError) as refused:
            await request(nc, MergeCarts(source_cart_id=anon, target_cart_id=user), TIMEOUT)
        assert (refused.value.code, refused.value.details["cart"]) == ("cart_closed", "target")
        still = await request(nc, GetCart(cart_id=anon), TIMEOUT)
        assert (still["status"], still["item_count"]) == ("active", 3)  # the anonymous lines stayed put

    client.run(scenario)


def test_merging_an_empty_cart_or_into_a_user_without_one(shop, client: Client) -> None:
    async def scenario(nc: nats.NATS) -> None:
        mug = await product(nc)
        empty = await request(nc, MergeCarts(source_cart_id=new_cart(), target_cart_id=(user := new_cart())), TIMEOUT)
        assert empty == {"cart": (await request(nc, GetCart(cart_id=user), TIMEOUT)), "adjustments": []}
        assert empty["cart"]["items"] == []
        anon = new_cart()
        await request(nc, AddToCart(cart_id=anon, product_id=mug["id"], quantity=2), TIMEOUT)
        fresh = await request(nc, MergeCarts(source_cart_id=anon, target_cart_id=new_cart()), TIMEOUT)
        assert [(i["product_id"], i["quantity"]) for i in fresh["cart"]["items"]] == [(mug["id"], 2)]

    client.run(scenario)


def test_abandonment_survives_a_restart_of_the_cart_service_and_old_anonymous_carts_go(
    backends: None, database_url: str, start_service, client: Client
) -> None:
    timers = {"cart_database_url": database_url, "cart_abandon_seconds": 3.0, "cart_forget_seconds": 2.0}
    cart_service = start_service("cart", **timers)
    cart = new_cart()

    async def add_one(nc: nats.NATS) -> dict[str, Any]:
        mug = await product(nc)
        return await request(nc, AddToCart(cart_id=cart, product_id=mug["id"], quantity=1), TIMEOUT)

    assert client.run(add_one)["status"] == "active"
    cart_service.stop()  # down before the alarm is due
    time.sleep(3.5)
    start_service("cart", **timers)

    async def watch(nc: nats.NATS) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not seen or seen[-1] != "gone"):
            reply = await request(nc, GetCart(cart_id=cart), TIMEOUT)
            status = "gone" if reply["status"] == "active" and not reply["items"] and seen else reply["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            await asyncio.sleep(0.2)
        return seen

    # due at 3 s while the service was down, so abandoned just after the restart; forgotten 2 s later
    seen = client.run(watch)
    assert seen in (["active", "abandoned", "gone"], ["abandoned", "gone"]), seen
    db = Database(database_url)
    assert db.read_sync(lambda s: load_states(s, CART_LANE, [cart])) == {}  # the row is gone, not just emptied
    db.close()
