"""Admin view of carts, e.g. the abandoned ones to follow up."""

from __future__ import annotations

from cartwheel.contracts.cart import CartListQuery, CartPage, ListCarts
from services.gateway import cursors
from services.gateway.api import Routes
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant

routes = Routes(tag="admin")


@routes.get(
    "/api/admin/carts",
    summary="Carts by status (e.g. status=abandoned), a page at a time",
    query=CartListQuery,
    response=CartPage,
    errors=(503,),
    auth="admin",
)
def list_carts(query: CartListQuery) -> CartPage:
    ctx = gateway()
    after = cursors.verified(query.cursor)
    message = ListCarts(tenant=current_tenant(), status=query.status, limit=query.limit, after=after)
    page = CartPage.model_validate(ctx.bus.request(message))
    return page.model_copy(update={"next_cursor": cursors.signed(page.next_cursor)})
