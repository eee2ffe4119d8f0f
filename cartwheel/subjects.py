"""Every subject, stream and bucket name Cartwheel uses. No name is spelled anywhere else."""

from __future__ import annotations

import base64

# Core request/reply queries and commands; each service answers in a queue group named after itself.
CATALOG_PRODUCTS_GET = "catalog.products.get"
CATALOG_PRODUCTS_LIST = "catalog.products.list"
CATALOG_PRODUCTS_CREATE = "catalog.products.create"
CATALOG_PRODUCTS_UPDATE = "catalog.products.update"


def health(service: str) -> str:
    """Subject on which ``service`` answers health probes (every replica, no queue group)."""
    return f"health.{service}"


# Events: one JetStream stream holds every domain event.
EVENTS_STREAM = "EVENTS"
EVENTS_ALL = "events.>"
CATALOG_PRODUCT_CREATED = "events.catalog.product_created"
CATALOG_PRODUCT_UPDATED = "events.catalog.product_updated"
CATALOG_EVENTS = "events.catalog.>"

# Key-value buckets.
CATALOG_CACHE_BUCKET = "catalog_products"


def catalog_cache_key(product_id: str) -> str:
    return f"product.{product_id}"


def catalog_sku_key(sku: str) -> str:
    """Key of the sku → product id entry; base64url because a sku may hold dots a key can't."""
    return "sku." + base64.urlsafe_b64encode(sku.encode()).decode().rstrip("=")
