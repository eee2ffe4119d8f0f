"""What the HTTP API takes in query strings and gives back; request bodies are the contracts' own models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cartwheel.contracts.base import PageCursor
from cartwheel.contracts.catalog import Category, Product, Sort


class FieldError(BaseModel):
    field: str | None = Field(description="Dotted path of the offending field; null for the body as a whole.")
    message: str


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable machine-readable code, e.g. `not_found`, `duplicate_sku`.")
    message: str = Field(description="Human-readable explanation.")
    fields: list[FieldError] | None = Field(None, description="Per-field problems (400 and 422).")


class ErrorResponse(BaseModel):
    """The one shape of every error the gateway returns."""

    error: ErrorDetail


class ProductOut(BaseModel):
    id: str
    sku: str
    name: str
    description: str
    price_cents: int
    currency: str
    active: bool
    categories: list[str] = Field(default_factory=list, description="Lowercase slugs, e.g. `kitchen`.")
    image_url: str | None = Field(
        None, description="Null until the product has an image; the `v` parameter changes with the image."
    )
    available: int | None = Field(None, description="Units that can be bought now; null when unknown.")
    digital: bool = Field(False, description="Bought for a file: the buyer downloads it once the order is paid.")
    file_name: str | None = Field(None, description="A digital product's file, as its download names it.")
    file_size: int | None = Field(None, description="Its bytes.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_product(cls, product: Product, available: int | None = None) -> ProductOut:
        fields = product.model_dump(exclude={"version", "image_etag", "image_type", "file_sha256", "file_type"})
        return cls.model_validate({**fields, "available": available, "image_url": image_url(product),
                                   "digital": product.digital})


def image_url(product: Product) -> str | None:
    """Where the product's image is served; versioned by its sha256 so caches refresh when it changes."""
    return f"/api/products/{product.id}/image?v={product.image_etag[:16]}" if product.image_etag else None


class ProductList(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next page; null on the last.")


class ProductListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(
        None,
        max_length=200,
        description="Words to search in name, description and sku (all must match; the last one as a prefix).",
    )
    category: Category | None = Field(None, description="Only products in this category (a slug).")
    sort: Sort | None = Field(
        None,
        description="relevance (the default with q), newest (the default otherwise), oldest, price_asc, "
        "price_desc or name. A cursor continues in the sort it was made in.",
    )
    limit: int = Field(20, ge=1, le=100)
    cursor: PageCursor | None = None
    include_inactive: bool = Field(False, description="Admins only: list inactive products too.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str = "gateway"


class ServiceStatus(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    answer: Any = Field(None, description="What the service said about itself, as it said it.")
    reason: str | None = None


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    nats: Literal["connected"] = "connected"
    worker: dict[str, Any] = Field(description="This worker process: pid and how its NATS loop runs.")
    services: dict[str, ServiceStatus] = Field(description="Answers of the services' health subjects (info only).")
