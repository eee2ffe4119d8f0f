"""Product images over a fake bus: magic numbers, size limit, ETag and 304, image_url in product reads."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel import subjects
from cartwheel.contracts.catalog import GetProduct, Product, SetProductImage
from cartwheel.contracts.inventory import GetStock
from cartwheel.errors import NotFound
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.errors import API_CSP
from services.gateway.images import MAX_IMAGE_BYTES, sniff
from services.gateway.testing import FakeBus
from tests.helpers import image
from tests.unit.test_gateway_products import ADMIN, TOKEN, Catalog

PNG, JPEG, WEBP = image("PNG"), image("JPEG"), image("WEBP")


class ImageCatalog(Catalog):
    """The test catalog, plus recording images the way the catalog service does."""

    def set_image(self, message: SetProductImage) -> dict[str, Any]:
        product = self.products.get(message.product_id)
        if product is None:
            raise NotFound("no such product")
        changes = {"image_etag": message.etag, "image_type": message.content_type, "version": product.version + 1}
        self.products[product.id] = product.model_copy(update=changes)
        return self.products[product.id].model_dump(mode="json")


@pytest.fixture
def catalog() -> ImageCatalog:
    return ImageCatalog()


@pytest.fixture
def bus(catalog: ImageCatalog) -> FakeBus:
    stock = {"product_id": "", "on_hand": 1, "reserved": 0, "available": 1}
    return FakeBus({GetProduct: catalog.get, SetProductImage: catalog.set_image, GetStock: lambda m: stock})


@pytest.fixture
def client(bus: FakeBus) -> FlaskClient:
    return create_app(Settings(admin_token=TOKEN, secret="s" * 32), bus).test_client()


def upload(client: FlaskClient, product_id: str, data: bytes, **headers: str) -> Any:
    return client.put(f"/api/admin/products/{product_id}/image", data=data, headers={**ADMIN, **headers})


@pytest.mark.parametrize(("data", "kind"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")])
def test_the_type_comes_from_the_magic_numbers(data: bytes, kind: str) -> None:
    assert sniff(data) == kind


@pytest.mark.parametrize("data", [b"", b"GIF89a" + b"\x00" * 20, b"RIFF\x00\x00\x00\x00WAVE", b"<svg/>", b"\x89PNG"])
def test_other_bytes_have_no_image_type(data: bytes) -> None:
    assert sniff(data) is None


def test_an_upload_is_stored_and_recorded_on_the_product(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    resp = upload(client, product.id, PNG, **{"Content-Type": "image/jpeg"})  # the bytes decide, not the header
    assert resp.status_code == 200, resp.get_json()
    etag = hashlib.sha256(PNG).hexdigest()
    assert bus.objects == {(subjects.PRODUCT_IMAGES_BUCKET, f"default/{product.id}/{etag}"): PNG}
    (recorded,) = [m for m in bus.sent if isinstance(m, SetProductImage)]
    assert (recorded.product_id, recorded.etag, recorded.content_type) == (product.id, etag, "image/png")
    assert resp.get_json()["image_url"] == f"/api/products/{product.id}/image?v={etag[:16]}"
    read = client.get(f"/api/products/{product.id}").get_json()
    assert read["image_url"] == resp.get_json()["image_url"]


def test_a_new_upload_replaces_the_old_image(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    upload(client, product.id, PNG)
    first = client.get(f"/api/products/{product.id}").get_json()["image_url"]
    assert upload(client, product.id, WEBP).status_code == 200
    etag = hashlib.sha256(WEBP).hexdigest()
    assert list(bus.objects) == [(subjects.PRODUCT_IMAGES_BUCKET, f"default/{product.id}/{etag}")]
    second = client.get(f"/api/products/{product.id}").get_json()["image_url"]
    assert second != first
    served = client.get(second)
    assert (served.data, served.mimetype) == (WEBP, "image/webp")


def test_the_image_is_served_with_a_strong_etag_and_304_when_it_matches(
    client: FlaskClient, bus: FakeBus, catalog: Catalog
) -> None:
    product = catalog.add()
    url = upload(client, product.id, JPEG).get_json()["image_url"]
    resp = client.get(url)
    etag = hashlib.sha256(JPEG).hexdigest()
    assert resp.status_code == 200 and resp.data == JPEG and resp.mimetype == "image/jpeg"
    assert resp.headers["ETag"] == f'"{etag}"'
    assert resp.headers["Cache-Control"] == "public, max-age=86400"
    again = client.get(url, headers={"If-None-Match": f'"{etag}"'})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == f'"{etag}"'
    assert client.get(url, headers={"If-None-Match": f'"other", W/"{etag}"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": "*"}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    plain = client.get(f"/api/products/{product.sku}/image")
    assert plain.status_code == 200 and plain.headers["Cache-Control"] == "public, max-age=60"


def test_a_worker_serves_a_known_image_from_memory(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    url = upload(client, product.id, PNG).get_json()["image_url"]
    assert client.get(url).data == PNG
    bus.objects.clear()  # content-addressed: the same name always holds the same bytes
    assert client.get(url).data == PNG


def test_too_large_is_413_and_nothing_is_stored(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    resp = upload(client, product.id, PNG + b"\x00" * (MAX_IMAGE_BYTES - len(PNG) + 1))
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "payload_too_large"
    assert bus.objects == {}
    exactly = upload(client, product.id, PNG + b"\x00" * (MAX_IMAGE_BYTES - len(PNG)))
    assert exactly.status_code == 200


def test_json_routes_keep_their_smaller_limit(client: FlaskClient) -> None:
    body = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    resp = client.post("/api/admin/products", data=body, headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status_code == 413


@pytest.mark.parametrize("data", [b"GIF89a" + b"\x00" * 20, b"", b"%PDF-1.7", b"<svg xmlns='x'/>"])
def test_anything_but_png_jpeg_webp_is_415(client: FlaskClient, bus: FakeBus, catalog: Catalog, data: bytes) -> None:
    product = catalog.add()
    resp = upload(client, product.id, data, **{"Content-Type": "image/png"})
    assert resp.status_code == 415 and resp.get_json()["error"]["code"] == "unsupported_media_type"
    assert bus.objects == {}


@pytest.mark.parametrize(
    "data",
    [
        PNG[:8] + b"<html><script>alert(document.cookie)</script></html>",  # the probe's upload
        JPEG[:4] + b"<html></html>" * 10,
        WEBP[:16] + b"\x00" * 64,
        PNG[: len(PNG) // 2],  # cut short
        image("PNG", 4, 4).replace(b"IDAT", b"IDAx"),  # a broken chunk
    ],
    ids=["html-behind-png-magic", "html-behind-jpeg-magic", "webp-header-alone", "png-cut-short", "png-broken-chunk"],
)
def test_bytes_that_only_start_like_an_image_are_415_and_not_stored(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, data: bytes
) -> None:
    product = catalog.add()
    resp = upload(client, product.id, data, **{"Content-Type": "image/png"})
    assert resp.status_code == 415 and resp.get_json()["error"]["code"] == "unsupported_media_type"
    assert bus.objects == {} and not [m for m in bus.sent if isinstance(m, SetProductImage)]


def test_an_image_of_too_many_pixels_is_413_and_not_stored(
    client: FlaskClient, bus: FakeBus, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.gateway.images.MAX_IMAGE_PIXELS", 100)  # a real bomb would take seconds to make
    product = catalog.add()
    assert upload(client, product.id, image("PNG", 10, 10)).status_code == 200
    resp = upload(client, product.id, image("PNG", 10, 11))
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "payload_too_large"
    assert len(bus.objects) == 1


def test_every_json_and_image_response_says_nosniff_and_allows_nothing(client: FlaskClient, catalog: Catalog) -> None:
    product = catalog.add()
    url = upload(client, product.id, PNG).get_json()["image_url"]
    image_response = client.get(url)
    responses = [
        image_response,
        client.get(url, headers={"If-None-Match": image_response.headers["ETag"]}),  # 304
        client.get(f"/api/products/{product.id}"),
        client.get("/api/products/nope/image"),  # an error
        client.post("/api/admin/products", data="{", headers={**ADMIN, "Content-Type": "application/json"}),
        client.get("/openapi.json"),
        client.get("/healthz"),
    ]
    assert [r.status_code for r in responses] == [200, 304, 200, 404, 400, 200, 200]
    assert {r.headers.get("X-Content-Type-Options") for r in responses} == {"nosniff"}
    # Issue 13: a restrictive CSP on every response, so even one rendered as a document can do nothing.
    assert {r.headers.get("Content-Security-Policy") for r in responses} == {API_CSP}
    assert "default-src 'none'" in API_CSP and "frame-ancestors 'none'" in API_CSP


def test_an_inactive_products_image_is_kept_by_no_shared_cache(client: FlaskClient, catalog: Catalog) -> None:
    product = catalog.add(active=False)
    url = upload(client, product.id, PNG).get_json()["image_url"]
    for path in (url, f"/api/products/{product.id}/image"):
        served = client.get(path, headers=ADMIN)
        assert served.status_code == 200 and served.headers["Cache-Control"] == "private, no-cache"
        again = client.get(path, headers={**ADMIN, "If-None-Match": served.headers["ETag"]})
        assert again.status_code == 304 and again.headers["Cache-Control"] == "private, no-cache"


def test_unknown_products_are_404(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    assert upload(client, "no-such-product", PNG).status_code == 404
    assert client.get("/api/products/no-such-product/image").status_code == 404
    assert bus.objects == {}


def test_a_product_without_an_image_is_404(client: FlaskClient, catalog: Catalog) -> None:
    product = catalog.add()
    resp = client.get(f"/api/products/{product.id}/image")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/products/{product.id}").get_json()["image_url"] is None


def test_an_inactive_products_image_is_for_admins(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add(active=False)
    upload(client, product.id, PNG)
    assert client.get(f"/api/products/{product.id}/image").status_code == 404
    assert client.get(f"/api/products/{product.id}/image", headers=ADMIN).status_code == 200


def test_uploads_need_the_admin_token(client: FlaskClient, bus: FakeBus, catalog: Catalog) -> None:
    product = catalog.add()
    resp = client.put(f"/api/admin/products/{product.id}/image", data=PNG)
    assert resp.status_code == 401
    wrong = client.put(f"/api/admin/products/{product.id}/image", data=PNG, headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401 and bus.objects == {}


def test_both_routes_are_in_the_openapi_document(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "put" in paths["/api/admin/products/{id}/image"]
    assert "image/*" in paths["/api/products/{id}/image"]["get"]["responses"]["200"]["content"]


def test_a_stored_product_keeps_its_image_fields() -> None:
    product = Product.model_validate(
        {
            "id": "p",
            "sku": "s",
            "name": "n",
            "description": "",
            "price_cents": 1,
            "currency": "EUR",
            "active": True,
            "version": 1,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
    )
    assert (product.categories, product.image_etag, product.image_type) == ([], None, None)


def test_an_image_replaced_since_the_cached_read_is_served_from_the_catalogs_product(
    client: FlaskClient, bus: FakeBus, catalog: ImageCatalog
) -> None:
    product = catalog.add()
    upload(client, product.id, PNG)
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_cache_key("default", product.id))] = (
        catalog.products[product.id].model_dump_json().encode()
    )
    upload(client, product.id, JPEG)  # the fake catalog doesn't write the cache: the cached copy names the png
    served = client.get(f"/api/products/{product.id}/image")
    assert (served.status_code, served.data) == (200, JPEG)
    assert served.headers["ETag"] == f'"{hashlib.sha256(JPEG).hexdigest()}"'
