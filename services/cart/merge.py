"""The cart service's side of a login merge: close the anonymous cart, look its products up, absorb.

Each step is a lane command whose id derives from the (anonymous, user) pair, so a login that
is retried after a timeout repeats nothing: the lanes answer a known command id with its first reply.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from cartwheel.contracts.cart import AbsorbCart, GetCart, MergeAway, MergeCarts, MergedLine
from cartwheel.errors import DomainError
from services.cart.handlers import CartHandlers

_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "cartwheel:cart-merge")
CLOSED = ("checked_out", "merged")


async def merge_carts(handlers: CartHandlers, cmd: MergeCarts) -> dict[str, Any]:
    adjustments: list[dict[str, Any]] = []
    if cmd.source_cart_id != cmd.target_cart_id:
        target = await handlers.get_cart(GetCart(tenant=cmd.tenant, cart_id=cmd.target_cart_id))
        if target["status"] in CLOSED:  # refused before the anonymous cart closes: its lines stay put
            raise DomainError(f"the user's cart was {target['status']}", code="cart_closed", cart="target",
                              status=target["status"])
        # Look the products up before closing the anonymous cart: a look-up that fails then leaves it
        # open, rather than closed with its lines not yet moved.
        source = await handlers.get_cart(GetCart(tenant=cmd.tenant, cart_id=cmd.source_cart_id))
        found = await _look_up(handlers, cmd, [item["product_id"] for item in source["items"]])
        lines = await _take_lines(handlers, cmd)
        added_since = [line.product.product_id for line in lines if line.product.product_id not in found]
        found |= await _look_up(handlers, cmd, added_since)
        if lines:
            adjustments = await _absorb(handlers, cmd, lines, found)
    # Read back rather than trust the absorb reply: a replayed reply may be older than the cart.
    cart = await handlers.get_cart(GetCart(tenant=cmd.tenant, cart_id=cmd.target_cart_id))
    return {"cart": cart, "adjustments": adjustments}


async def _take_lines(handlers: CartHandlers, cmd: MergeCarts) -> list[MergedLine]:
    away = MergeAway(id=_command_id("away", cmd), tenant=cmd.tenant, cart_id=cmd.source_cart_id,
                     into=cmd.target_cart_id)
    try:
        reply = await handlers.send(away)
    except DomainError as refusal:
        if refusal.code == "cart_closed":  # checked out, or merged into another cart: nothing to move
            return []
        raise
    return [MergedLine.model_validate(line) for line in reply["lines"]]


async def _look_up(handlers: CartHandlers, cmd: MergeCarts, product_ids: list[str]) -> dict[str, tuple[bool, int]]:
    """Whether each product is for sale now, and how many are available."""
    for_sale, available = await asyncio.gather(
        asyncio.gather(*(_for_sale(handlers, pid, cmd) for pid in product_ids)),
        asyncio.gather(*(handlers._available(pid, cmd) for pid in product_ids)),
    )
    return dict(zip(product_ids, zip(for_sale, available, strict=True), strict=True))


async def _absorb(
    handlers: CartHandlers, cmd: MergeCarts, lines: list[MergedLine], found: dict[str, tuple[bool, int]]
) -> list[dict[str, Any]]:
    absorb = AbsorbCart(
        id=_command_id("absorb", cmd),
        tenant=cmd.tenant,
        cart_id=cmd.target_cart_id,
        source_cart_id=cmd.source_cart_id,
        lines=lines,
        available={pid: available for pid, (_, available) in found.items()},
        for_sale={pid: for_sale for pid, (for_sale, _) in found.items()},
        email=cmd.email,
    )
    return list((await handlers.send(absorb))["adjustments"])


async def _for_sale(handlers: CartHandlers, product_id: str, cmd: MergeCarts) -> bool:
    try:
        return (await handlers._product(product_id, cmd)).active
    except DomainError as refusal:
        if refusal.code == "not_found":
            return False
        raise


def _command_id(step: str, cmd: MergeCarts) -> str:
    return str(uuid.uuid5(_IDS, f"{step}/{cmd.source_cart_id}/{cmd.target_cart_id}"))
