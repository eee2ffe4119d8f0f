"""Messages owned by the catalog service."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_serializer,
    model_validator,
)

from cartwheel import subjects
from cartwheel.contracts.base import Message
from cartwheel.money import unchargeable

# Active ISO 4217 codes (2026), minus funds and precious-metal codes a shop does not price in.
_ISO_4217_CODES = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD "
    "CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
    "GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD "
    "KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO "
    "NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE "
    "SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND "
    "VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG"
)
ISO_4217 = frozenset(_ISO_4217_CODES.split())

MAX_PRICE_CENTS = 100_000_000_00  # 100 million in major units: far beyond any product, well inside BIGINT.


def _known_currency(code: str) -> str:
    if code not in ISO_4217:
        raise ValueError(f"{code!r} is not an ISO 4217 currency code")
    return code


Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=10_000)]
PriceCents = Annotated[StrictInt, Field(ge=0, le=MAX_PRICE_CENTS)]
Currency = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{3}$"),
    AfterValidator(_known_currency),
    Field(json_schema_extra={"enum": sorted(ISO_4217)}),  # the codes taken, spelled out in /openapi.json
]
Stock = Annotated[StrictInt, Field(ge=0, le=10_000_000)]
MAX_CATEGORIES = 10
Category = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=40)]


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


Categories = Annotated[
    list[Category],
    Field(max_length=MAX_CATEGORIES, description="Short lowercase slugs, e.g. `kitchen`, `mugs` (at most 10)."),
    AfterValidator(_distinct),
]
ImageType = Literal["image/png", "image/jpeg", "image/webp"]
Etag = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Sort = Literal["relevance", "newest", "oldest", "price_asc", "price_desc", "name"]


def _one_of_the_codes(schema: dict[str, Any]) -> None:
    """A draft's currency as clients see it: one of the codes, or left out (None stands for left out)."""
    codes = next(option for option in schema.pop("anyOf") if "enum" in option)
    schema.update(codes)
    schema.pop("default", None)


class ProductDraft(BaseModel):
    """A new product as an admin submits it."""

    model_config = ConfigDict(extra="forbid")

    sku: Sku
    name: Name
    description: Description = ""
    price_cents: PriceCents
    currency: Currency | None = Field(None, description="Default: the shop's currency (its tenant's setting).",
                                      json_schema_extra=lambda schema: _one_of_the_codes(schema))
    active: StrictBool = True
    categories: Categories = []
    stock: Stock | None = Field(None, description="Initial stock on hand, handed to inventory.")

    @model_validator(mode="after")
    def _chargeable(self) -> ProductDraft:
        if self.currency is not None and (problem := unchargeable(self.price_cents, self.currency)):
            raise ValueError(f"price_cents: {problem}")
        return self

    def in_currency(self, default: str) -> ProductDraft:
        """This draft with ``default`` as its currency when it names none (checked as if it had been given)."""
        if self.currency is not None:
            return self
        return ProductDraft.model_validate(self.model_dump() | {"currency": default})


def _given_and_not_null(schema: dict[str, Any]) -> None:
    """ProductPatch's JSON schema says what ``_not_empty`` enforces: at least one field, and none of them null."""
    schema["minProperties"] = 1
    for prop in schema["properties"].values():
        prop.pop("default", None)
        prop.update(next(kind for kind in prop.pop("anyOf") if kind.get("type") != "null"))


class ProductPatch(BaseModel):
    """Fields an admin may change; at least one."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_given_and_not_null)

    sku: Sku | None = None
    name: Name | None = None
    description: Description | None = None
    price_cents: PriceCents | None = None
    currency: Currency | None = None
    active: StrictBool | None = None
    categories: Categories | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ProductPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        for field in self.model_fields_set:
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class Product(BaseModel):
    id: str
    sku: str
    name: str
    description: str
    price_cents: int
    currency: str
    active: bool
    categories: list[str] = []
    image_etag: str | None = Field(None, description="sha256 (hex) of the product's image; null without one.")
    image_type: str | None = Field(None, description="Content type of the image: image/png, image/jpeg, image/webp.")
    file_name: str | None = Field(None, description="A digital product's file, as the buyer's download names it; "
                                  "null: shipped goods.")
    file_size: int | None = Field(None, description="Its bytes.")
    file_sha256: str | None = Field(None, description="sha256 (hex) of the file: the object that holds it.")
    file_type: str | None = Field(None, description="Its content type, as the admin uploaded it.")
    version: int = Field(description="Increases with every change; caches keep the highest.")

    @property
    def digital(self) -> bool:
        """Bought for its file: the buyer downloads it once the order is paid."""
        return self.file_sha256 is not None
    created_at: datetime
    updated_at: datetime


class ProductPage(BaseModel):
    items: list[Product]
    next_cursor: str | None = None


class CreateProduct(Message):
    subject: ClassVar[str] = subjects.CATALOG_PRODUCTS_CREATE
    draft: ProductDraft


class UpdateProduct(Message):
    subject: ClassVar[str] = subjects.CATALOG_PRODUCTS_UPDATE
    product_id: str
    patch: ProductPatch

    @field_serializer("patch")
    def _only_given_fields(self, patch: ProductPatch, info: SerializationInfo) -> dict[str, Any]:
        return patch.model_dump(mode=info.mode, exclude_unset=True)


class SetProductImage(Message):
    """Record the image just stored in the object store (``etag`` names the object) on the product."""

    subject: ClassVar[str] = subjects.CATALOG_PRODUCTS_SET_IMAGE
    product_id: str = Field(min_length=1, max_length=200)
    etag: Etag
    content_type: ImageType


class DigitalFile(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=0)
    sha256: Etag
    content_type: str = Field(min_length=3, max_length=255)


class SetProductFile(Message):
    """Record the file just stored in the object store (``file.sha256`` names the object): the product is
    digital from now on."""

    subject: ClassVar[str] = subjects.CATALOG_PRODUCTS_SET_FILE
    product_id: str = Field(min_length=1, max_length=200)
    file: DigitalFile


class GetProduct(Message):
    subject: ClassVar[str] = subjects.CATALOG_PRODUCTS_GET
    id_or_sku: str = Field(min_length=1, max_length=200)


class ListProducts(Message):
    """A page of products: full-text ``q`` (relevance order by default), ``category``, ``sort``, keyset ``cursor``."""

    subject: ClassVar[str] = subjects.CATALOG_PRODUCTS_LIST
    q: str | None = Field(None, max_length=200)
    category: Category | None = None
    sort: Sort | None = Field(None, description="Default: relevance with q, else newest.")
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=500)
    include_inactive: bool = False


class ProductEvent(Message):
    """What every catalog event carries: the product as it is after the change."""

    product: Product


class ProductCreated(ProductEvent):
    subject: ClassVar[str] = subjects.CATALOG_PRODUCT_CREATED
    stock: int | None = None


class ProductUpdated(ProductEvent):
    subject: ClassVar[str] = subjects.CATALOG_PRODUCT_UPDATED
    changed: list[str]
