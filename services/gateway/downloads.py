"""Digital products: the admin uploads a product's file into the JetStream object store (checksummed, named by
its sha256), and a buyer downloads it through a signed, expiring link of a paid order (cartwheel/downloads.py).

A link stops working when its time is up, after ``downloads_per_line`` downloads of that product by that
order, and as soon as the order is no longer paid (refunded, disputed, cancelled): the order's status is
asked at every download. Downloads answer Range requests (a resumed download is not counted again).
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
from datetime import UTC
from typing import Any

from flask import Response, request, send_file
from pydantic import BaseModel, Field
from werkzeug.wsgi import ClosingIterator

from cartwheel import downloads, subjects
from cartwheel.contracts.catalog import DigitalFile, Product, SetProductFile
from cartwheel.contracts.inventory import MAX_ON_HAND, GetStock, SetStock, StockLevel
from cartwheel.contracts.orders import GetOrder, OrderView
from cartwheel.errors import DomainError, NotFound
from services.gateway import store
from services.gateway.api import Routes
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.cookies import installation_secret
from services.gateway.errors import ApiError
from services.gateway.images import object_store, read_body
from services.gateway.products import find_product
from services.gateway.schemas import ProductOut

routes = Routes(tag="admin")

FILE_TIMEOUT_S = 60.0  # a file of tens of MB to or from the object store
PAID = frozenset({"paid", "fulfilled"})
DOWNLOADS_AT_ONCE = 2  # per gateway worker: each holds its file (up to digital_file_max_bytes) in memory
BUSY_WAIT_S = 10.0
_SERVING = threading.BoundedSemaphore(DOWNLOADS_AT_ONCE)  # gevent's, in the server (monkey-patched)
UNLIMITED = MAX_ON_HAND
"""What a digital product with no stock of its own gets on hand: no limit worth the name (its admin may set one)."""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


class FileQuery(BaseModel):
    """``PUT /api/admin/products/{id}/file?filename=``."""

    filename: str = Field(min_length=1, max_length=255, description="The name buyers' downloads get.")


class DownloadQuery(BaseModel):
    expires: int = Field(ge=0, le=2**40, description="When the link stops working (Unix seconds), as the link says.")
    sig: str = Field(pattern=r"^[0-9a-f]{32}$", description="The link's signature, as the link says.")


@routes.put(
    "/api/admin/products/{id}/file",
    summary="Upload a digital product's file (any type, at most CARTWHEEL_DIGITAL_FILE_MAX_BYTES) as the body: "
    "the product is digital from then on, its buyers download the file once paid; with no stock of its own it "
    "gets no limit",
    query=FileQuery,
    response=ProductOut,
    errors=(404, 413, 503),
    auth="admin",
    raw_body=("application/octet-stream", "*/*"),
)
def upload_file(id: str, query: FileQuery) -> ProductOut:
    ctx = gateway()
    product = find_product(id)
    data = read_body(ctx.settings.digital_file_max_bytes)
    sha256 = hashlib.sha256(data).hexdigest()
    content_type = request.mimetype or "application/octet-stream"
    name = subjects.product_image_object(current_tenant(), product.id, sha256)
    object_store().object_put(subjects.PRODUCT_FILES_BUCKET, name, data, timeout=FILE_TIMEOUT_S)
    file = DigitalFile(name=_safe(query.filename), size=len(data), sha256=sha256, content_type=content_type)
    updated = Product.model_validate(ctx.bus.request(SetProductFile(tenant=current_tenant(), product_id=product.id,
                                                                    file=file)))
    if product.file_sha256 and product.file_sha256 != sha256:  # the old file: no paid order names its bytes
        old = subjects.product_image_object(current_tenant(), product.id, product.file_sha256)
        object_store().object_delete(subjects.PRODUCT_FILES_BUCKET, old)
    level = StockLevel.model_validate(ctx.bus.request(GetStock(tenant=current_tenant(), product_id=product.id)))
    if not product.file_sha256 and level.on_hand == 0 and level.reserved == 0:  # its first file, no stock set
        level = StockLevel.model_validate(ctx.bus.request(
            SetStock(tenant=current_tenant(), product_id=product.id, on_hand=UNLIMITED)))
    return ProductOut.from_product(updated, available=level.available)


def _safe(filename: str) -> str:
    """The name as a download may carry it: no path, no control or quoting characters."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return _SAFE_NAME.sub("_", base).strip(" .") or "download"


@routes.get(
    downloads.PREFIX + "/{order_id}/{product_id}",
    summary="A paid order's digital product, through the signed link on its page or in its mail: 403 for a "
    "forged link, 410 once it expired, was used up, or the order was refunded or disputed; Range requests "
    "resume a download",
    query=DownloadQuery,
    errors=(403, 404, 410, 416, 503),
    media_type="application/octet-stream",
    tag="orders",
)
def download(order_id: str, product_id: str, query: DownloadQuery) -> Response:
    ctx = gateway()
    verdict = downloads.check(installation_secret(), current_tenant(), order_id, product_id, query.expires, query.sig,
                              time.time())
    if verdict == "forged":
        raise ApiError(403, "forbidden", "this download link is not valid")
    if verdict == "expired":
        raise _gone("this download link has expired: your order's page has a fresh one")
    order = _order(order_id)
    if order.status not in PAID:
        raise _gone(f"this order is {order.status.replace('_', ' ')}: its downloads are closed")
    if not any(line.product_id == product_id and line.digital for line in order.lines):
        raise NotFound("this order has no such download")
    product = find_product(product_id)
    if not product.file_sha256:
        raise NotFound("this product has no file any more")
    if not _SERVING.acquire(timeout=BUSY_WAIT_S):  # each one holds its file in memory while it is sent
        raise ApiError(503, "service_unavailable", "too many downloads at once; try again shortly",
                       headers={"Retry-After": "2"})
    try:
        response = _file(order_id, product, ctx.settings.downloads_per_line)
    except BaseException:
        _SERVING.release()
        raise
    # Given back once the server has sent it all (or the client left). Not call_on_close: a file's response is
    # passed straight through to the server, which closes its body, never the response.
    response.response = ClosingIterator(response.response, _SERVING.release)
    return response


def _file(order_id: str, product: Product, allowed: int) -> Response:
    """The file, as much of it as the request asks (Range), once the bytes it sends fit in what the order may
    still download: ``allowed`` times the file's size, whichever requests (resumed, in ranges) take it."""
    assert product.file_sha256 is not None
    name = subjects.product_image_object(current_tenant(), product.id, product.file_sha256)
    data = object_store().object_get(subjects.PRODUCT_FILES_BUCKET, name, timeout=FILE_TIMEOUT_S)
    if data is None:
        raise NotFound("this product's file is gone")
    response = send_file(io.BytesIO(data), mimetype=product.file_type or "application/octet-stream",
                         as_attachment=True, download_name=product.file_name or "download", conditional=True,
                         etag=product.file_sha256, max_age=0,
                         last_modified=product.updated_at.astimezone(UTC))
    response.headers["Cache-Control"] = "private, no-store"
    if request.method == "HEAD" or response.status_code not in (200, 206):  # no bytes go out (304, 416)
        return response
    sending = response.content_length or 0
    whole = response.status_code == 200 or (response.content_range is not None and response.content_range.start == 0)
    if store.count_download(order_id, product.id, sending, allowed * len(data), whole) is None:
        response.close()
        raise _gone(f"this file was downloaded as many times as an order allows ({allowed})")
    return response


def links(order: dict[str, Any]) -> dict[str, str]:
    """Fresh links to a paid order's downloads, by product id (its pages make them at every view); none for an
    order that is not paid."""
    if order["status"] not in PAID:
        return {}
    expires, secret, tenant = int(time.time()) + gateway().settings.download_link_seconds, installation_secret(), \
        current_tenant()
    return {line["product_id"]: downloads.path(secret, tenant, order["order_id"], line["product_id"], expires)
            for line in order["lines"] if line.get("digital")}


def _order(order_id: str) -> OrderView:
    try:
        return OrderView.model_validate(gateway().bus.request(GetOrder(tenant=current_tenant(), order_id=order_id)))
    except DomainError as refusal:
        if refusal.code == "not_found":
            raise NotFound("no such order") from None
        raise


def _gone(message: str) -> ApiError:
    return ApiError(410, "gone", message)
