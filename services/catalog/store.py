"""Catalog queries; each takes the caller's Session (one transaction per request)."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cartwheel.contracts.base import new_id, utcnow
from cartwheel.contracts.catalog import DigitalFile, Product, ProductDraft, ProductPatch
from cartwheel.errors import DomainError, Invalid, NotFound
from cartwheel.money import unchargeable
from services.catalog import domain
from services.catalog.models import ProductRow


def to_product(row: ProductRow) -> Product:
    return Product.model_validate(row, from_attributes=True)


def _duplicate_sku(sku: str) -> DomainError:
    return DomainError(f"a product with sku {sku!r} already exists", code="duplicate_sku", sku=sku)


def _sku_taken(session: Session, sku: str, other_than: str | None = None) -> bool:
    query = select(ProductRow.id).where(ProductRow.sku == sku)
    if other_than:
        query = query.where(ProductRow.id != other_than)
    return session.scalar(query) is not None


def _flush_unique(session: Session, sku: str) -> None:
    try:
        session.flush()
    except IntegrityError:  # a replica inserted the same sku between our check and our write
        raise _duplicate_sku(sku) from None


def create_product(session: Session, draft: ProductDraft, tenant: str) -> Product:
    if _sku_taken(session, draft.sku):
        raise _duplicate_sku(draft.sku)
    now = utcnow()
    row = ProductRow(
        id=new_id(),
        tenant=tenant,
        version=1,
        created_at=now,
        updated_at=now,
        **draft.model_dump(exclude={"stock"}),
    )
    session.add(row)
    _flush_unique(session, draft.sku)
    return to_product(row)


def find_row(session: Session, id_or_sku: str) -> ProductRow:
    row = session.scalar(select(ProductRow).where(or_(ProductRow.id == id_or_sku, ProductRow.sku == id_or_sku)))
    if row is None:
        raise NotFound(f"no product {id_or_sku!r}", id=id_or_sku)
    return row


def get_product(session: Session, id_or_sku: str) -> Product:
    return to_product(find_row(session, id_or_sku))


def update_product(session: Session, product_id: str, patch: ProductPatch) -> tuple[Product, Product, list[str]]:
    """Apply ``patch``; returns the product before and after, and the names of the fields that changed."""
    row = session.scalar(select(ProductRow).where(ProductRow.id == product_id).with_for_update())
    if row is None:
        raise NotFound(f"no product {product_id!r}", id=product_id)
    before = to_product(row)
    changed = domain.changes(before.model_dump(), patch)
    if not changed:
        return before, before, []
    if "sku" in changed and _sku_taken(session, changed["sku"], other_than=product_id):
        raise _duplicate_sku(changed["sku"])
    price, currency = changed.get("price_cents", before.price_cents), changed.get("currency", before.currency)
    if ("price_cents" in changed or "currency" in changed) and (problem := unchargeable(price, currency)):
        raise Invalid(f"price_cents: {problem}", fields=[{"field": "price_cents", "message": problem}])
    for field, value in changed.items():
        setattr(row, field, value)
    row.version += 1
    row.updated_at = utcnow()
    _flush_unique(session, row.sku)
    return before, to_product(row), sorted(changed)


def set_image(session: Session, product_id: str, etag: str, content_type: str) -> tuple[Product, Product, list[str]]:
    """Record the product's image; returns the product before and after, and the fields that changed."""
    return _set(session, product_id, {"image_etag": etag, "image_type": content_type})


def set_file(session: Session, product_id: str, file: DigitalFile) -> tuple[Product, Product, list[str]]:
    """Record a digital product's file (it is digital from now on); as :func:`set_image` returns."""
    values = {"file_name": file.name, "file_size": file.size, "file_sha256": file.sha256,
              "file_type": file.content_type}
    return _set(session, product_id, values)


def _set(session: Session, product_id: str, values: dict[str, object]) -> tuple[Product, Product, list[str]]:
    row = session.scalar(select(ProductRow).where(ProductRow.id == product_id).with_for_update())
    if row is None:
        raise NotFound(f"no product {product_id!r}", id=product_id)
    before = to_product(row)
    changed = sorted(field for field, value in values.items() if getattr(row, field) != value)
    if not changed:
        return before, before, []
    for field in changed:
        setattr(row, field, values[field])
    row.version += 1
    row.updated_at = utcnow()
    session.flush()
    return before, to_product(row), changed
