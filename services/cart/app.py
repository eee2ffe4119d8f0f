"""Wires the cart service: one lane key per cart, so edits from many tabs apply in order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cartwheel import subjects
from cartwheel.contracts.cart import AddToCart, ChangeQuantity, GetCart, ListCarts, MergeCarts, RemoveFromCart
from cartwheel.contracts.orders import OrderPaid
from cartwheel.lanes.runtime import LaneRuntime
from cartwheel.service import Service
from cartwheel.settings import Settings
from services.cart.domain import CartTimers, make_spec
from services.cart.handlers import CartHandlers
from services.cart.merge import merge_carts


def build(settings: Settings) -> Service:
    service = Service("cart", settings)
    timers = CartTimers(
        abandon_after=timedelta(seconds=settings.cart_abandon_seconds),
        forget_anonymous_after=timedelta(seconds=settings.cart_forget_seconds),
    )
    LaneRuntime(service, make_spec(timers, settings.tenant))
    handlers = CartHandlers(service)
    service.on_start(handlers.open_lane)
    service.on_stop(handlers.close_lane)
    service.handle(subjects.CART_GET, GetCart)(handlers.get_cart)
    service.handle(subjects.CART_ADD, AddToCart)(handlers.add)
    service.handle(subjects.CART_SET, ChangeQuantity)(handlers.change_quantity)
    service.handle(subjects.CART_REMOVE, RemoveFromCart)(handlers.remove)
    service.handle(subjects.CART_LIST, ListCarts)(handlers.list_carts)
    service.consume(subjects.ORDERS_PAID, OrderPaid, durable="cart_checkout")(handlers.order_paid)

    @service.handle(subjects.CART_MERGE, MergeCarts)
    async def merge(cmd: MergeCarts) -> dict[str, Any]:
        return await merge_carts(handlers, cmd)

    return service
