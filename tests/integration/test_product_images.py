"""Product images end to end below HTTP: the gateway app and its NATS bridge, the real catalog, a real object store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from cartwheel import bus, subjects
from cartwheel.db import migrate
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.bridge import NatsBridge
from tests.helpers import image, random_sku

TOKEN = "t" * 24
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# A small png, and a jpeg of noise that spans several object store chunks (128 kB each).
PNG = image("PNG")
JPEG = image("JPEG", 640, 640, noise=True)


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> Settings:
    settings = Settings(nats_url=nats_url, var_dir=tmp_path, admin_token=TOKEN, secret="s" * 32, request_timeout=5.0)
    migrate("gateway", settings.database_url("gateway"))  # the admin checks count wrong tokens there
    return settings


@pytest.fixture
def bridge(settings: Settings, start_service, tmp_path: Path) -> Iterator[NatsBridge]:
    start_service("catalog", catalog_database_url=f"sqlite:///{tmp_path / 'catalog.db'}")  # declares the buckets
    bridge = NatsBridge(settings)
    bridge.start(wait=10)
    yield bridge
    bridge.close()


@pytest.fixture
def http(settings: Settings, bridge: NatsBridge) -> FlaskClient:
    return create_app(settings, bridge).test_client()


def create(http: FlaskClient) -> dict:
    body = {"sku": random_sku(), "name": "Mug", "price_cents": 1200, "currency": "EUR"}
    resp = http.post("/api/admin/products", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_an_image_is_stored_in_the_object_store_and_served_back(http: FlaskClient, bridge: NatsBridge) -> None:
    product = create(http)
    assert product["image_url"] is None
    stored = http.put(f"/api/admin/products/{product['id']}/image", data=JPEG, headers=ADMIN)
    assert stored.status_code == 200, stored.get_json()
    etag = hashlib.sha256(JPEG).hexdigest()
    name = subjects.product_image_object("default", product["id"], etag)
    assert bridge.object_get(subjects.PRODUCT_IMAGES_BUCKET, name) == JPEG
    url = http.get(f"/api/products/{product['id']}").get_json()["image_url"]
    assert url == stored.get_json()["image_url"] == f"/api/products/{product['id']}/image?v={etag[:16]}"
    served = http.get(url)
    assert (served.status_code, served.mimetype, served.headers["ETag"]) == (200, "image/jpeg", f'"{etag}"')
    assert served.data == JPEG
    assert http.get(url, headers={"If-None-Match": f'"{etag}"'}).status_code == 304


def test_a_new_upload_replaces_the_stored_image(http: FlaskClient, bridge: NatsBridge) -> None:
    product = create(http)
    first = http.put(f"/api/admin/products/{product['id']}/image", data=JPEG, headers=ADMIN).get_json()
    second = http.put(f"/api/admin/products/{product['id']}/image", data=PNG, headers=ADMIN).get_json()
    assert first["image_url"] != second["image_url"]
    old = subjects.product_image_object("default", product["id"], hashlib.sha256(JPEG).hexdigest())
    assert bridge.object_get(subjects.PRODUCT_IMAGES_BUCKET, old) is None
    served = http.get(second["image_url"])
    assert (served.data, served.mimetype) == (PNG, "image/png")


def test_the_bucket_is_declared_with_the_streams(bridge: NatsBridge, settings: Settings) -> None:
    bridge.call(lambda: bus.declare_topology(bridge.js, settings), 10)  # again: idempotent
    status = bridge.call(lambda: _status(bridge), 10)
    assert status == subjects.PRODUCT_IMAGES_BUCKET
    assert bridge.object_get(subjects.PRODUCT_IMAGES_BUCKET, "no-such-object") is None


async def _status(bridge: NatsBridge) -> str:
    store = await bridge.js.object_store(subjects.PRODUCT_IMAGES_BUCKET)
    return (await store.status()).bucket
