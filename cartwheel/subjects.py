"""Every subject, stream and bucket name Cartwheel uses. No name is spelled anywhere else."""

from __future__ import annotations

import base64

# Core request/reply queries and commands; each service answers in a queue group named after itself.
CATALOG_PRODUCTS_GET = "catalog.products.get"
CATALOG_PRODUCTS_LIST = "catalog.products.list"
CATALOG_PRODUCTS_CREATE = "catalog.products.create"
CATALOG_PRODUCTS_UPDATE = "catalog.products.update"
CATALOG_PRODUCTS_SET_IMAGE = "catalog.products.set_image"
CATALOG_PRODUCTS_SET_FILE = "catalog.products.set_file"  # a digital product's file
INVENTORY_STOCK_GET = "inventory.stock.get"
INVENTORY_STOCKS_GET = "inventory.stock.get_many"
INVENTORY_RESTOCK = "inventory.stock.restock"
INVENTORY_SET_STOCK = "inventory.stock.set"
INVENTORY_LANE = "inventory"  # lane of stock commands (inventory.cmd.<product_id>), one key per product
CART_LANE = "cart"  # lane of cart commands (cart.cmd.<cart_id>), one key per cart
SERVICE_LANES = {"cart": CART_LANE, "inventory": INVENTORY_LANE}
"""The lane each lane-running service owns (its stream, lease bucket, command subjects and dead letters)."""


def health(service: str) -> str:
    """Subject on which ``service`` answers health probes (every replica, no queue group)."""
    return f"health.{service}"


CART_GET = "cart.get"
CART_ADD = "cart.items.add"
CART_SET = "cart.items.set"
CART_REMOVE = "cart.items.remove"
CART_LIST = "cart.list"
CART_MERGE = "cart.merge"

ORDERS_CHECKOUT = "orders.checkout"
ORDERS_GET = "orders.get"
ORDERS_LIST = "orders.list"
ORDERS_CANCEL = "orders.cancel"
ORDERS_PAY = "orders.pay"

PAYMENTS_INTENT_CREATE = "payments.intents.create"
PAYMENTS_INTENT_CONFIRM = "payments.intents.confirm"
PAYMENTS_INTENT_CANCEL = "payments.intents.cancel"
PAYMENTS_REFUND = "payments.refunds.create"
PAYMENTS_WEBHOOK = "payments.webhooks.stripe"
PAYMENTS_CHECKOUT_CREATE = "payments.checkout.create"
PAYMENTS_CHECKOUT_EXPIRE = "payments.checkout.expire"

NOTIFICATIONS_MAIL_LIST = "notifications.mail.list"  # what the embedded mail catcher caught (admin)
NOTIFICATIONS_MAIL_SENT = "notifications.mail.sent"  # the mails sent about one order (admin)
NOTIFICATIONS_MAIL_RESEND = "notifications.mail.resend"  # send one of them again (admin)
NOTIFICATIONS_UNSUBSCRIBE = "notifications.unsubscribe"  # no more cart reminders to an address

# Events: one JetStream stream holds every domain event.
EVENTS_STREAM = "EVENTS"
EVENTS_ALL = "events.>"
CATALOG_PRODUCT_CREATED = "events.catalog.product_created"
CATALOG_PRODUCT_UPDATED = "events.catalog.product_updated"
CATALOG_EVENTS = "events.catalog.>"
CART_UPDATED = "events.cart.updated"
CART_ABANDONED = "events.cart.abandoned"
CART_MERGED = "events.cart.merged"
CART_CHECKED_OUT = "events.cart.checked_out"
INVENTORY_RESERVED = "events.inventory.reserved"
INVENTORY_RELEASED = "events.inventory.released"
INVENTORY_COMMITTED = "events.inventory.committed"
INVENTORY_EXPIRED = "events.inventory.expired"
INVENTORY_STOCK_CHANGED = "events.inventory.stock_changed"
INVENTORY_OUT_OF_STOCK = "events.inventory.out_of_stock"
INVENTORY_EVENTS = "events.inventory.>"
ORDERS_CREATED = "events.orders.created"
ORDERS_STATUS_CHANGED = "events.orders.status_changed"
ORDERS_PAID = "events.orders.paid"
PAYMENTS_SUCCEEDED = "events.payments.succeeded"
PAYMENTS_FAILED = "events.payments.failed"
PAYMENTS_CANCELED = "events.payments.canceled"
PAYMENTS_REFUNDED = "events.payments.refunded"
PAYMENTS_REQUIRES_ACTION = "events.payments.requires_action"
PAYMENTS_DISPUTED = "events.payments.disputed"
PAYMENTS_DISPUTE_CLOSED = "events.payments.dispute_closed"
PAYMENTS_REFUND_FAILED = "events.payments.refund_failed"
PAYMENTS_INTENT_REQUESTED = "events.payments.intent_requested"
PAYMENTS_INTENT_CREATED = "events.payments.intent_created"
PAYMENTS_NOT_STARTED = "events.payments.not_started"
PAYMENTS_CHECKOUT_EXPIRED = "events.payments.checkout_expired"
PAYMENTS_EVENTS = "events.payments.>"

PAYMENT_OUTCOMES = (PAYMENTS_SUCCEEDED, PAYMENTS_FAILED, PAYMENTS_CANCELED, PAYMENTS_REFUNDED, PAYMENTS_REQUIRES_ACTION,
                    PAYMENTS_DISPUTED, PAYMENTS_DISPUTE_CLOSED, PAYMENTS_REFUND_FAILED, PAYMENTS_INTENT_CREATED,
                    PAYMENTS_NOT_STARTED, PAYMENTS_CHECKOUT_EXPIRED)
"""The payment events that move an order (orders consumes each with a durable of its own)."""

EVENT_CONSUMERS: dict[str, dict[str, str]] = {
    "catalog": {"catalog-cache": CATALOG_EVENTS},
    "cart": {"cart_checkout": ORDERS_PAID},
    "inventory": {"inventory-products": CATALOG_PRODUCT_CREATED, "inventory-stock-board": INVENTORY_EVENTS},
    "orders": {"orders_" + subject.rsplit(".", 1)[1]: subject for subject in PAYMENT_OUTCOMES},
    "payments": {"payments_intent_requests": PAYMENTS_INTENT_REQUESTED},  # its own queue of intents to create
    "notifications": {"notifications_orders": ORDERS_STATUS_CHANGED,  # mails to buyers as their orders move ...
                      "notifications_carts": CART_ABANDONED},  # ... and a reminder of a signed-in shopper's cart
}
"""Each service's durable consumers of the EVENTS stream and the subjects they read: the bus lets a service
make and use exactly these (cartwheel/natsauth.py), so it reads no other service's events."""

# Key-value buckets.
CATALOG_CACHE_BUCKET = "catalog_products"


def catalog_cache_key(tenant: str, product_id: str) -> str:
    """Key of one tenant's product: every key of a shared bucket starts with its tenant's name."""
    return f"{tenant}.product.{product_id}"


def catalog_sku_key(tenant: str, sku: str) -> str:
    """Key of the sku → product id entry; base64url because a sku may hold dots a key can't."""
    return f"{tenant}.sku." + base64.urlsafe_b64encode(sku.encode()).decode().rstrip("=")


def is_catalog_product_key(key: str) -> bool:
    """True for a product's key, False for a sku entry's (tenant names hold no dots)."""
    return key.split(".", 2)[1:2] == ["product"]


INVENTORY_STOCK_BUCKET = "inventory_stock"  # each product's stock level, written by inventory after a change


def inventory_stock_key(tenant: str, product_id: str) -> str:
    return f"{tenant}.product.{product_id}"


TENANTS_BUCKET = "tenants"  # the tenant registry's mirror: each tenant's hosts, status and settings


def tenant_key(name: str) -> str:
    return f"tenant.{name}"


def kv_stream(bucket: str) -> str:
    """The stream NATS keeps a KV bucket in."""
    return f"KV_{bucket}"


def kv_keys_of_tenant(bucket: str, tenant: str) -> str:
    """The subject of every key of ``tenant`` in a shared bucket (keys begin with the tenant's name)."""
    return f"$KV.{bucket}.{tenant}.>"


# Object store buckets.
PRODUCT_IMAGES_BUCKET = "product_images"
PRODUCT_FILES_BUCKET = "product_files"  # digital products' files, by tenant, product and sha256
TENANT_OBJECT_BUCKETS = (PRODUCT_IMAGES_BUCKET, PRODUCT_FILES_BUCKET)
"""Buckets whose objects are named ``<tenant>/…``: a tenant's export copies them, its deletion erases them."""


def product_image_object(tenant: str, product_id: str, etag: str) -> str:
    """Name of one stored image (or digital product's file): the tenant's, content-addressed, so a reader never
    gets bytes that don't match its ETag, nor another shop's object."""
    return f"{tenant}/{product_id}/{etag}"


# Lanes (see cartwheel/lanes): commands enter on <lane>.cmd.<key> and are stored per partition.
LANE_REPLY_HEADER = "Cartwheel-Reply"
LANE_TENANT_HEADER = "Cartwheel-Tenant"  # whose database a command applies in (README, "Lanes ... per tenant")


def event_delivery(inbox: str, durable: str) -> str:
    """Where the EVENTS stream pushes a service's durable consumer: one subject for every replica, so replicas
    starting at once ask for one consumer with one config (the server answers all of them) instead of each
    asking with an inbox of its own, when all but the first fail with "consumer name already in use". Under
    the service's own ``inbox`` prefix, where only it may subscribe."""
    return f"{inbox}.events.{durable}"


def lane_stream(lane: str) -> str:
    return f"LANE_{lane.upper()}"


def lane_command(lane: str, key: str) -> str:
    return f"{lane}.cmd.{key}"


def lane_partition(lane: str, partition: int) -> str:
    """Filter of one partition's commands, as the stream stores them: ``<lane>.part.<n>.<key>``."""
    return f"{lane}.part.{partition}.*"


def lane_partition_transform(lane: str, partitions: int) -> tuple[str, str]:
    """Source and destination of the stream's subject transform that maps keys onto partitions."""
    return f"{lane}.cmd.*", f"{lane}.part.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"


def lane_replies(inbox_prefix: str, token: str) -> str:
    """A lane client's reply inbox, under its identity's inbox prefix: the only part of another identity's
    inbox a lane worker may publish to (its callers' replies)."""
    return f"{inbox_prefix}.lane.{token}"


def lane_outcome(lane: str) -> str:
    """Where a caller asks for the recorded reply of a command id (after a retry found it a duplicate)."""
    return f"{lane}.outcome"


def lane_bucket(lane: str) -> str:
    """KV bucket of the lane's replica membership and partition leases."""
    return f"lanes_{lane}"
