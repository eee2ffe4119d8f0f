"""Product images: the admin's upload into the JetStream object store, and the shop's read with ETag caching.

Each image is stored under its product id and sha256 (content-addressed), and the catalog records
that sha256 on the product. A reader serves the object the product names, so the bytes always
match the ETag; bytes by name never change, so a worker may keep recent ones in memory.
An upload is stored only when its bytes decode whole (Pillow) as the type their magic numbers declare.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import OrderedDict
from typing import Protocol, cast, get_args

from flask import Response, current_app, request
from PIL import Image

from cartwheel import subjects
from cartwheel.contracts.catalog import ImageType, Product, SetProductImage
from cartwheel.errors import NotFound, ServiceUnavailable
from services.gateway.api import Header
from services.gateway.auth import is_admin
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.errors import ApiError
from services.gateway.products import ask_catalog, find_product, routes
from services.gateway.schemas import ProductOut

log = logging.getLogger("cartwheel.gateway.images")

MAX_IMAGE_BYTES = 5 * 1024 * 1024
VERSIONED_MAX_AGE = 86400  # the URL names the image's version: a change makes a new URL
UNVERSIONED_MAX_AGE = 60  # the plain URL's image may change: revalidate soon (cheap, with If-None-Match)
MEMORY_BYTES = 32 * 1024 * 1024  # recent images each worker keeps
MAX_IMAGE_PIXELS = 25_000_000  # a decode holds every pixel in memory (~100 MB at 4 bytes a pixel)
PILLOW_FORMAT: dict[ImageType, str] = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


class ObjectStore(Protocol):
    """What this module needs of the bus beyond :class:`services.gateway.context.Bus` (the bridge has it)."""

    def object_get(self, bucket: str, name: str, timeout: float | None = None) -> bytes | None: ...

    def object_put(self, bucket: str, name: str, data: bytes, timeout: float | None = None) -> None: ...

    def object_delete(self, bucket: str, name: str, timeout: float | None = None) -> None: ...


def object_store() -> ObjectStore:
    return cast(ObjectStore, gateway().bus)


def sniff(data: bytes) -> ImageType | None:
    """The image type the bytes' magic numbers say, or None when they are not png, jpeg or webp."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_type(data: bytes) -> ImageType:
    """The type of an image whose bytes decode whole as the type their magic numbers declare.

    Magic numbers alone let HTML ride behind a PNG signature; a full decode does not.
    A 415 when the bytes are no png, jpeg or webp (or are broken), a 413 beyond MAX_IMAGE_PIXELS.
    """
    declared = sniff(data)
    if declared is None:
        raise _not_an_image()
    try:
        with Image.open(io.BytesIO(data), formats=[PILLOW_FORMAT[declared]]) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise _too_many_pixels()
            image.load()
    except Image.DecompressionBombError:
        raise _too_many_pixels() from None
    except (OSError, SyntaxError, ValueError, EOFError):  # what Pillow raises for bytes it cannot decode
        raise _not_an_image() from None
    return declared


def _not_an_image() -> ApiError:
    return ApiError(415, "unsupported_media_type", "the body must be a png, jpeg or webp image")


def _too_many_pixels() -> ApiError:
    return ApiError(413, "payload_too_large", f"the image has more than {MAX_IMAGE_PIXELS:,} pixels")


@routes.put(
    "/api/admin/products/{id}/image",
    summary="Upload the product's image: the raw bytes of a png, jpeg or webp (at most 5 MB and 25 megapixels) "
    "as the body; bytes that do not decode as that type are 415",
    response=ProductOut,
    errors=(404, 413, 415, 503),
    auth="admin",
    tag="admin",
    raw_body=get_args(ImageType),
)
def upload_image(id: str) -> ProductOut:
    product = find_product(id)
    data = read_body(MAX_IMAGE_BYTES)
    content_type = image_type(data)
    etag = hashlib.sha256(data).hexdigest()
    ctx = gateway()
    name = subjects.product_image_object(current_tenant(), product.id, etag)
    object_store().object_put(subjects.PRODUCT_IMAGES_BUCKET, name, data)
    message = SetProductImage(tenant=current_tenant(), product_id=product.id, etag=etag, content_type=content_type)
    updated = Product.model_validate(ctx.bus.request(message))
    if product.image_etag and product.image_etag != etag:
        _forget(product.id, product.image_etag)
    return ProductOut.from_product(updated)


@routes.get(
    "/api/products/{id}/image",
    summary="The product's image with a strong ETag; 304 when If-None-Match names it",
    errors=(404, 503),
    auth="optional",
    media_type="image/*",
    headers=(Header("If-None-Match", "ETags of the copies the client has: 304 when the image is one of them."),),
    not_modified=True,
)
def product_image(id: str) -> Response:
    admin = is_admin()
    product = find_product(id)
    for attempt in range(2):
        if attempt:  # replaced (and deleted) since the product was read: read it again where it is current
            product = ask_catalog(product.id)
        if not product.image_etag or not product.image_type or (not product.active and not admin):
            raise NotFound("this product has no image")
        etag = product.image_etag
        headers = {"ETag": f'"{etag}"', "Cache-Control": _cache_control(product, etag)}
        if request.if_none_match.contains_weak(etag):  # If-None-Match compares weakly (RFC 9110)
            return Response(status=304, headers=headers)
        data = _image_bytes(product.id, etag)
        if data is not None:
            return Response(data, mimetype=product.image_type, headers=headers)
    raise NotFound("this product's image is gone")


def _cache_control(product: Product, etag: str) -> str:
    """Public for a product on sale; an inactive one's image (admins only) is kept by no shared cache."""
    if not product.active:
        return "private, no-cache"  # the admin's browser revalidates: each use is checked again
    max_age = VERSIONED_MAX_AGE if request.args.get("v") == etag[:16] else UNVERSIONED_MAX_AGE
    return f"public, max-age={max_age}"


def read_body(limit: int) -> bytes:
    """The raw request body, at most ``limit`` bytes (413 above it, declared or not)."""
    request.max_content_length = limit
    data = request.get_data(cache=False)  # a Content-Length above the limit is a 413 before a byte is read
    request.stream.read(1)  # a chunked body stops at the limit; reading on raises 413
    return data


def _image_bytes(product_id: str, etag: str) -> bytes | None:
    name, *older = _names(product_id, etag)
    memory = _memory()
    data = memory.get(name)
    if data is None:
        for stored in (name, *older):
            data = object_store().object_get(subjects.PRODUCT_IMAGES_BUCKET, stored)
            if data is not None:
                break
        if data is not None and hashlib.sha256(data).hexdigest() == etag:
            memory.put(name, data)
    return data


def _forget(product_id: str, etag: str) -> None:
    """Delete the replaced image; a failure leaves an orphan object, not a wrong image."""
    for name in _names(product_id, etag):
        try:
            object_store().object_delete(subjects.PRODUCT_IMAGES_BUCKET, name)
        except ServiceUnavailable as error:
            log.warning("gateway could not delete the replaced image %s: %s", name, error)


def _names(product_id: str, etag: str) -> list[str]:
    """Where the image may be stored: under its tenant, and for the installation's own tenant also where images
    were stored before there were tenants (``<product>/<sha256>``), so an upgrade loses none."""
    tenant = current_tenant()
    name = subjects.product_image_object(tenant, product_id, etag)
    return [name, f"{product_id}/{etag}"] if tenant == gateway().settings.tenant else [name]


class ImageMemory:
    """Recently served images of one worker, least recently used out first, up to ``capacity`` bytes."""

    def __init__(self, capacity: int = MEMORY_BYTES) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes | None:
        with self._lock:
            data = self._items.get(name)
            if data is not None:
                self._items.move_to_end(name)
            return data

    def put(self, name: str, data: bytes) -> None:
        if len(data) > self.capacity // 4:
            return  # one big image must not push out everything else
        with self._lock:
            if name in self._items:
                return
            self._items[name] = data
            self.size += len(data)
            while self.size > self.capacity:
                _, dropped = self._items.popitem(last=False)
                self.size -= len(dropped)


def _memory() -> ImageMemory:
    return current_app.extensions.setdefault("cartwheel.images", ImageMemory())
