"""Admin stock routes: read, restock and count a product's stock, through the inventory service."""

from __future__ import annotations

import uuid

from flask import request

from cartwheel.contracts.inventory import GetStock, Restock, RestockBody, SetStock, SetStockBody, StockLevel
from services.gateway.api import Header, Routes
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.errors import ApiError
from services.gateway.products import find_product

routes = Routes(tag="admin")

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY = 200
IDEMPOTENCY = Header(
    IDEMPOTENCY_HEADER,
    "Retrying with the same key applies the change once and answers as the first time.",
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
)
_KEYS = uuid.uuid5(uuid.NAMESPACE_URL, "cartwheel:gateway:idempotency")


@routes.get(
    "/api/admin/inventory/{product_id}",
    summary="A product's stock: on hand, reserved, available",
    response=StockLevel,
    errors=(404, 503),
    auth="admin",
)
def get_stock(product_id: str) -> StockLevel:
    ctx = gateway()
    product = find_product(product_id)
    return StockLevel.model_validate(ctx.bus.request(GetStock(tenant=current_tenant(), product_id=product.id)))


@routes.post(
    "/api/admin/inventory/{product_id}/restock",
    summary="Add units to a product's stock (send an Idempotency-Key header to retry safely)",
    body=RestockBody,
    response=StockLevel,
    errors=(404, 503),
    auth="admin",
    headers=(IDEMPOTENCY,),
)
def restock(product_id: str, body: RestockBody) -> StockLevel:
    ctx = gateway()
    product = find_product(product_id)
    message = Restock(id=_command_id(), tenant=current_tenant(), product_id=product.id, quantity=body.quantity)
    return StockLevel.model_validate(ctx.bus.request(message))


@routes.put(
    "/api/admin/inventory/{product_id}",
    summary="Set a product's stock on hand (refused below what is reserved)",
    body=SetStockBody,
    response=StockLevel,
    errors=(404, 409, 503),
    auth="admin",
    headers=(IDEMPOTENCY,),
)
def set_stock(product_id: str, body: SetStockBody) -> StockLevel:
    ctx = gateway()
    product = find_product(product_id)
    message = SetStock(id=_command_id(), tenant=current_tenant(), product_id=product.id, on_hand=body.on_hand)
    return StockLevel.model_validate(ctx.bus.request(message))


def _command_id() -> str:
    """The lane command id: from the client's Idempotency-Key (scoped to this route and product), else new."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return str(uuid.uuid4())
    if not 1 <= len(key) <= MAX_KEY:
        raise ApiError(400, "bad_request", f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY} characters")
    return str(uuid.uuid5(_KEYS, f"{request.method} {request.path} {key}"))
