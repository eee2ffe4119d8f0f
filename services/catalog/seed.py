"""The demo catalog `cartwheel up` adds on first start: a dozen products, created through the catalog service,
each with its picture (services/catalog/demo_images.py) in the object store."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import nats

from cartwheel import natsauth, subjects
from cartwheel.bus import request
from cartwheel.contracts.catalog import (
    CreateProduct,
    GetProduct,
    Product,
    ProductDraft,
    ProductPatch,
    SetProductImage,
    UpdateProduct,
)
from cartwheel.errors import DomainError
from cartwheel.settings import Settings
from services.catalog.demo_images import demo_image

DEMO_PRODUCTS = Path(__file__).with_name("demo_products.json")


async def seed_demo_async(settings: Settings) -> int:
    nc = await nats.connect(settings.nats_servers, name="cartwheel-seed",
                            **natsauth.connect_options(settings, natsauth.ADMIN))
    created = 0
    try:
        for fields in json.loads(DEMO_PRODUCTS.read_text()):
            draft = ProductDraft.model_validate(fields)
            try:
                made = await request(nc, CreateProduct(tenant=settings.tenant, draft=draft), settings.request_timeout)
                created += 1
            except DomainError as exc:
                if exc.code != "duplicate_sku":
                    raise
                made = await _add_categories(nc, settings, draft)
            await _add_picture(nc, settings, Product.model_validate(made))
    finally:
        await nc.close()
    return created


async def _add_categories(nc: nats.NATS, settings: Settings, draft: ProductDraft) -> dict[str, Any]:
    """Give a demo product seeded before products had categories its categories (never overwriting any)."""
    found = await request(nc, GetProduct(tenant=settings.tenant, id_or_sku=draft.sku), settings.request_timeout)
    product = Product.model_validate(found)
    if draft.categories and not product.categories:
        patch = ProductPatch(categories=draft.categories)
        command = UpdateProduct(tenant=settings.tenant, product_id=product.id, patch=patch)
        found = await request(nc, command, settings.request_timeout)
    return found


async def _add_picture(nc: nats.NATS, settings: Settings, product: Product) -> None:
    """Give a demo product with no image its picture (an image an admin uploaded stays)."""
    data = None if product.image_etag else demo_image(product.sku)
    if data is None:
        return
    etag = hashlib.sha256(data).hexdigest()
    store = await nc.jetstream().object_store(subjects.PRODUCT_IMAGES_BUCKET)
    await store.put(subjects.product_image_object(settings.tenant, product.id, etag), data)
    command = SetProductImage(tenant=settings.tenant, product_id=product.id, etag=etag, content_type="image/png")
    await request(nc, command, settings.request_timeout)


def seed_demo(settings: Settings) -> int:
    """Create the demo products that don't exist yet; returns how many were created."""
    return asyncio.run(seed_demo_async(settings))
