"""Product routes: reads (KV cache, else the catalog; availability from inventory), the admin's create and update."""

from __future__ import annotations

import logging
import re

from pydantic import ValidationError

from cartwheel import subjects
from cartwheel.contracts.catalog import (
    CreateProduct,
    GetProduct,
    ListProducts,
    Product,
    ProductDraft,
    ProductPage,
    ProductPatch,
    UpdateProduct,
)
from cartwheel.errors import NotFound, ServiceUnavailable
from services.gateway import cursors, stock
from services.gateway.api import Link, Routes
from services.gateway.auth import is_admin
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.errors import ApiError
from services.gateway.schemas import ProductList, ProductListQuery, ProductOut

log = logging.getLogger("cartwheel.gateway.products")
routes = Routes(tag="products")

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_IDENTIFIER = 200


@routes.get(
    "/api/products",
    summary="List active products (admins: include_inactive=true)",
    query=ProductListQuery,
    response=ProductList,
    errors=(503,),
    auth="optional",
)
def list_products(query: ProductListQuery) -> ProductList:
    admin = is_admin()
    if query.include_inactive and not admin:
        raise ApiError(401, "unauthorized", "include_inactive needs the admin token")
    ctx = gateway()
    cursor = cursors.verified(query.cursor)
    message = ListProducts(tenant=current_tenant(), **query.model_dump(exclude={"cursor"}), cursor=cursor)
    page = ProductPage.model_validate(ctx.bus.request(message))
    products = [p for p in page.items if p.active or query.include_inactive]
    available = stock.available_of([p.id for p in products])  # one request per page
    items = [ProductOut.from_product(p, available.get(p.id)) for p in products]
    return ProductList(items=items, next_cursor=cursors.signed(page.next_cursor))


@routes.get(
    "/api/products/{id_or_sku}",
    summary="One product by id or sku",
    response=ProductOut,
    errors=(404, 503),
    auth="optional",
)
def get_product(id_or_sku: str) -> ProductOut:
    admin = is_admin()
    product = find_product(id_or_sku)
    if not product.active and not admin:
        raise NotFound("no such product")
    return ProductOut.from_product(product, stock.available(product.id))


@routes.post(
    "/api/admin/products",
    summary="Create a product",
    body=ProductDraft,
    response=ProductOut,
    status=201,
    errors=(409, 503),
    auth="admin",
    tag="admin",
    links=(
        Link("GetProduct", "products.get_product", {"id_or_sku": "$response.body#/id"}),
        Link("UpdateProduct", "products.update_product", {"id": "$response.body#/id"}),
        Link("UploadImage", "images.upload_image", {"id": "$response.body#/id"}),
        Link("UploadFile", "downloads.upload_file", {"id": "$response.body#/id"}),
        Link("GetStock", "inventory.get_stock", {"product_id": "$response.body#/id"}),
        Link("Restock", "inventory.restock", {"product_id": "$response.body#/id"}),
        Link("SetStock", "inventory.set_stock", {"product_id": "$response.body#/id"}),
    ),
)
def create_product(body: ProductDraft) -> tuple[ProductOut, dict[str, str]]:
    ctx = gateway()
    data = ctx.bus.request(CreateProduct(tenant=current_tenant(), draft=body))
    product = ProductOut.from_product(Product.model_validate(data))
    return product, {"Location": f"/api/products/{product.id}"}


@routes.patch(
    "/api/admin/products/{id}",
    summary="Change a product's fields",
    body=ProductPatch,
    response=ProductOut,
    errors=(404, 409, 503),
    auth="admin",
    tag="admin",
)
def update_product(id: str, body: ProductPatch) -> ProductOut:
    if len(id) > MAX_IDENTIFIER:
        raise NotFound("no such product")
    ctx = gateway()
    data = ctx.bus.request(UpdateProduct(tenant=current_tenant(), product_id=id, patch=body))
    return ProductOut.from_product(Product.model_validate(data))


def find_product(id_or_sku: str) -> Product:
    """The product (active or not) by id or sku: from the KV cache, else the catalog; NotFound if none."""
    if len(id_or_sku) > MAX_IDENTIFIER:
        raise NotFound("no such product")
    return _cached(id_or_sku) or ask_catalog(id_or_sku)


def _cached(identifier: str) -> Product | None:
    """The product from the catalog's KV cache; None on a miss or an unreadable entry.

    A sku goes through its sku → id entry, which may be stale after a sku change: the
    product found must carry that sku, or the catalog is asked.
    """
    if UUID.match(identifier):
        return _cached_product(identifier.lower())
    product_id = _kv_get(subjects.catalog_sku_key(current_tenant(), identifier))
    product = _cached_product(product_id.decode()) if product_id and UUID.match(product_id.decode()) else None
    return product if product and product.sku == identifier else None


def _cached_product(product_id: str) -> Product | None:
    key = subjects.catalog_cache_key(current_tenant(), product_id)
    raw = _kv_get(key)
    if raw is None:
        return None
    try:
        return Product.model_validate_json(raw)
    except ValidationError:
        log.warning("gateway ignores an unreadable catalog cache entry %s", key)
        return None


def _kv_get(key: str) -> bytes | None:
    try:
        return gateway().bus.kv_get(subjects.CATALOG_CACHE_BUCKET, key)
    except ServiceUnavailable as error:  # the catalog may still answer
        log.info("gateway skips the catalog cache: %s", error)
        return None


def ask_catalog(identifier: str) -> Product:
    """The product as the catalog has it now (not the cache); NotFound if none."""
    ctx = gateway()
    data = ctx.bus.request(GetProduct(tenant=current_tenant(), id_or_sku=identifier))
    return Product.model_validate(data)


# The image routes join this module's routes (images.py imports find_product and routes from here).
from services.gateway import images  # noqa: E402, F401
