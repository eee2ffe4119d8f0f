"""Cart handlers: look the product and its stock up, then send the change into the cart's lane."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from cartwheel.contracts.base import Message
from cartwheel.contracts.cart import (
    CART_LANE,
    AddItem,
    AddToCart,
    CartCommand,
    CartPage,
    CartView,
    ChangeQuantity,
    CheckOut,
    GetCart,
    ListCarts,
    ProductSnapshot,
    RemoveFromCart,
    RemoveItem,
    SetQuantity,
)
from cartwheel.contracts.catalog import Product
from cartwheel.contracts.orders import OrderPaid
from cartwheel.lanes.client import LaneClient
from cartwheel.lanes.store import load_all_states, load_states
from cartwheel.lookups import Lookups
from cartwheel.service import Service
from services.cart.domain import CartState, view

SCAN = 5000  # carts read per page at most, so a rare status can't make one request read them all


class CartHandlers:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.timeout = service.settings.request_timeout * 0.8  # under the gateway's own wait
        self.lane: LaneClient | None = None
        self.lookups = Lookups(lambda: self.service.broker.connection, self.timeout)

    async def open_lane(self) -> None:
        self.lane = await LaneClient(self.service.broker.connection, CART_LANE).start()
        self.lookups.start()

    async def close_lane(self) -> None:
        await self.lookups.stop()
        if self.lane is not None:
            await self.lane.close()

    async def get_cart(self, query: GetCart) -> dict[str, Any]:
        stored = await self.service.db.read(lambda s: load_states(s, CART_LANE, [query.cart_id]))
        state = CartState.model_validate_json(stored[query.cart_id]) if query.cart_id in stored else CartState()
        return view(query.cart_id, state).model_dump(mode="json")

    async def list_carts(self, query: ListCarts) -> dict[str, Any]:
        """Scans carts in id order, keeping those with the status asked for (a page stops at ``SCAN`` carts read)."""

        def scan(session: Session) -> CartPage:
            found: list[CartView] = []
            after, read = query.after, 0
            while len(found) < query.limit and read < SCAN:
                rows = load_all_states(session, CART_LANE, after, min(500, SCAN - read))
                if not rows:
                    return CartPage(items=found)
                for key, raw in rows:
                    read, after = read + 1, key
                    state = CartState.model_validate_json(raw)
                    if query.status is None or state.status == query.status:
                        found.append(view(key, state))
                        if len(found) == query.limit:
                            break
            return CartPage(items=found, next_cursor=after)

        return (await self.service.db.read(scan)).model_dump(mode="json")

    async def add(self, cmd: AddToCart) -> dict[str, Any]:
        product = await self._product(cmd.product_id, cmd)
        snapshot = ProductSnapshot(
            product_id=product.id,
            sku=product.sku,
            name=product.name,
            unit_price_cents=product.price_cents,
            currency=product.currency,
            active=product.active,
        )
        available = await self._available(product.id, cmd)
        return await self.send(
            AddItem(
                id=cmd.id,
                tenant=cmd.tenant,
                cart_id=cmd.cart_id,
                product=snapshot,
                quantity=cmd.quantity,
                available=available,
                email=cmd.email,
            )
        )

    async def change_quantity(self, cmd: ChangeQuantity) -> dict[str, Any]:
        available = await self._available(cmd.product_id, cmd) if cmd.quantity else None
        return await self.send(
            SetQuantity(
                id=cmd.id,
                tenant=cmd.tenant,
                cart_id=cmd.cart_id,
                product_id=cmd.product_id,
                quantity=cmd.quantity,
                available=available,
            )
        )

    async def remove(self, cmd: RemoveFromCart) -> dict[str, Any]:
        return await self.send(
            RemoveItem(id=cmd.id, tenant=cmd.tenant, cart_id=cmd.cart_id, product_id=cmd.product_id)
        )

    async def order_paid(self, event: OrderPaid) -> None:
        """An order placed from a cart was paid: that cart is checked out (a repeat changes nothing)."""
        order = event.order
        if order.cart_id:
            await self.send(
                CheckOut(id=f"checkout-{order.order_id}", tenant=event.tenant, cart_id=order.cart_id,
                         order_id=order.order_id)
            )

    async def _product(self, product_id: str, cause: Message) -> Product:
        """From this process's copy of the catalog's cache, else from the catalog (checkout checks it again)."""
        return await self.lookups.product(product_id, cause, current=False)

    async def _available(self, product_id: str, cause: Message) -> int:
        """From this process's copy of inventory's stock bucket, else from inventory."""
        return await self.lookups.available(product_id, cause)

    async def send(self, cmd: CartCommand) -> dict[str, Any]:
        """Into the cart's lane; the request's id is the command id, so a retried request changes nothing."""
        assert self.lane is not None, "the lane client opens at service start"
        return await self.lane.call(
            cmd.cart_id, cmd.kind, cmd.model_dump(mode="json"), command_id=cmd.id, timeout=self.timeout
        )
