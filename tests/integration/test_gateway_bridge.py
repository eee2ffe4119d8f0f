"""The gateway app and its NATS bridge against a real nats-server, with a fake catalog on the catalog subjects."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from cartwheel import bus, natsserver, subjects
from cartwheel.db import migrate
from cartwheel.errors import ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.bridge import NatsBridge
from services.gateway.fake_catalog import FakeCatalog
from tests.helpers import random_sku

TOKEN = "t" * 24
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def settings_for(nats_url: str, tmp_path: Path, **overrides: object) -> Settings:
    return Settings(nats_url=nats_url, var_dir=tmp_path, admin_token=TOKEN, secret="s" * 32, **overrides)


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> Settings:
    settings = settings_for(nats_url, tmp_path, request_timeout=2.0)
    migrate("gateway", settings.database_url("gateway"))  # the admin checks count wrong tokens there
    return settings


@pytest.fixture
def bridge(settings: Settings) -> Iterator[NatsBridge]:
    bridge = NatsBridge(settings)
    bridge.start(wait=10)
    assert bridge.connected and bridge.loop_kind == "thread"
    bridge.call(lambda: bus.declare_topology(bridge.js, settings), 10)
    yield bridge
    bridge.close()


@pytest.fixture
def catalog(nats_url: str) -> Iterator[FakeCatalog]:
    catalog = FakeCatalog(nats_url).start()
    yield catalog
    catalog.stop()


@pytest.fixture
def client(settings: Settings, bridge: NatsBridge) -> FlaskClient:
    return create_app(settings, bridge).test_client()


def wait_until(condition: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_reads_go_through_the_catalog(client: FlaskClient, catalog: FakeCatalog) -> None:
    product = catalog.add(sku=random_sku(), name="Teapot", price_cents=2500)
    by_sku = client.get(f"/api/products/{product.sku}")
    assert by_sku.status_code == 200 and by_sku.get_json()["id"] == product.id
    listed = client.get("/api/products", query_string={"q": product.sku}).get_json()
    assert [item["id"] for item in listed["items"]] == [product.id]
    assert client.get(f"/api/products/{random_sku()}").status_code == 404


def test_admin_writes_go_through_the_catalog(client: FlaskClient, catalog: FakeCatalog) -> None:
    draft = {"sku": random_sku(), "name": "Kettle", "price_cents": 4000, "currency": "EUR"}
    created = client.post("/api/admin/products", json=draft, headers=ADMIN)
    assert created.status_code == 201
    product_id = created.get_json()["id"]
    assert created.headers["Location"] == f"/api/products/{product_id}"
    duplicate = client.post("/api/admin/products", json=draft, headers=ADMIN)
    assert duplicate.status_code == 409 and duplicate.get_json()["error"]["code"] == "duplicate_sku"
    patched = client.patch(f"/api/admin/products/{product_id}", json={"price_cents": 3900}, headers=ADMIN)
    assert patched.status_code == 200 and patched.get_json()["price_cents"] == 3900
    assert catalog.products[product_id].price_cents == 3900


def test_a_cached_product_is_served_from_kv_without_the_catalog(
    client: FlaskClient, bridge: NatsBridge, catalog: FakeCatalog
) -> None:
    product = catalog.add(sku=random_sku(), name="Only in the catalog")
    cached = product.model_copy(update={"name": "From the cache"})
    key = subjects.catalog_cache_key("default", product.id)

    async def put() -> None:
        kv = await bridge.js.key_value(subjects.CATALOG_CACHE_BUCKET)
        await kv.put(key, cached.model_dump_json().encode())

    bridge.call(put, 5)
    response = client.get(f"/api/products/{product.id}")
    assert response.status_code == 200 and response.get_json()["name"] == "From the cache"
    assert subjects.CATALOG_PRODUCTS_GET not in catalog.received


def test_a_cache_miss_asks_the_catalog(client: FlaskClient, catalog: FakeCatalog) -> None:
    product = catalog.add(sku=random_sku(), name="Not cached")
    response = client.get(f"/api/products/{product.id}")
    assert response.status_code == 200 and response.get_json()["name"] == "Not cached"
    assert catalog.received == [subjects.CATALOG_PRODUCTS_GET]


def test_a_service_that_does_not_answer_in_time_is_503(client: FlaskClient, catalog: FakeCatalog) -> None:
    product = catalog.add(sku=random_sku())
    arrived = catalog.hold(product.sku)
    try:
        response = client.get(f"/api/products/{product.sku}")
        assert arrived.is_set()
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "service_unavailable"
        assert int(response.headers["Retry-After"]) > 0
    finally:
        catalog.release(product.sku)


def test_nobody_listening_is_503(client: FlaskClient) -> None:
    response = client.get(f"/api/products/{random_sku()}")
    assert response.status_code == 503 and "Retry-After" in response.headers


def test_readyz_reports_the_catalog_answer(client: FlaskClient, catalog: FakeCatalog) -> None:
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready" and body["worker"]["loop"] == "thread"
    assert body["services"]["catalog"] == {
        "status": "ok",
        "answer": {"service": "catalog", "status": "ok"},
        "reason": None,
    }


def test_a_call_that_times_out_is_cancelled(bridge: NatsBridge) -> None:
    cancelled = threading.Event()

    async def never_answers() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ServiceUnavailable):
        bridge.call(never_answers(), 0.2)
    assert cancelled.wait(5)


def test_errors_inside_a_call_reach_the_caller(bridge: NatsBridge) -> None:
    async def fails() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        bridge.call(fails, 5)


def test_the_gateway_starts_without_nats_and_becomes_ready_when_it_appears(tmp_path: Path) -> None:
    port = natsserver.free_port()
    settings = settings_for(f"nats://127.0.0.1:{port}", tmp_path)
    app = create_app(settings)  # its own bridge, started by the first request
    client = app.test_client()
    server = natsserver.NatsServer(tmp_path / "late-nats", port)
    try:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "Retry-After" in not_ready.headers
        assert client.get(f"/api/products/{random_sku()}").status_code == 503
        server.start()
        assert wait_until(lambda: client.get("/readyz").status_code == 200)
    finally:
        app.extensions["cartwheel.gateway"].bus.close()
        server.stop()


GREENLET_CALLS = """
from gevent import monkey
monkey.patch_all()
import asyncio, gc, json, sys
from pathlib import Path
import gevent
from cartwheel.errors import DomainError, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway.bridge import NatsBridge

bridge = NatsBridge(Settings(nats_url=sys.argv[1], var_dir=Path(sys.argv[2]), secret="s" * 32))
bridge.start(wait=10)
seen = {"loop": bridge.loop_kind}

async def echo(n):
    await asyncio.sleep(0.001 * (n % 7))
    return n

calls = [gevent.spawn(bridge.call, echo(n), 5) for n in range(300)]
gevent.joinall(calls)
seen["answers_in_order"] = [c.value for c in calls] == list(range(300))

cancelled = []
async def never_answers():
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.append(True)
        raise
try:
    bridge.call(never_answers(), 0.2)
except ServiceUnavailable as error:
    seen["timeout"] = str(error)
gevent.sleep(0.2)
seen["cancelled"] = cancelled == [True]

async def fails():
    raise ValueError("from the loop")
try:
    bridge.call(fails, 5)
except ValueError as error:
    seen["error"] = str(error)

async def refused():
    raise DomainError("sold out", code="out_of_stock")
gc.collect()
gc.disable()
for _ in range(50):
    try:
        bridge.call(refused, 5)
    except DomainError:
        pass
seen["cyclic_garbage_per_refusal"] = gc.collect() / 50
gc.enable()
bridge.close()
print(json.dumps(seen))
"""


def test_calls_from_greenlets_are_answered_cancelled_and_fail_as_from_threads(nats_url: str, tmp_path: Path) -> None:
    """Under gevent (the gateway's workers) calls take the greenlet path: many at once, a time-out, errors."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", GREENLET_CALLS, nats_url, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "no answer within 0.2 s" in seen.pop("timeout", "")
    # A refusal (a 409) leaves nothing for the cyclic collector: its traceback held the waiting
    # frame, which held the result holding the refusal (about 30 objects per refusal went to the collector).
    assert seen.pop("cyclic_garbage_per_refusal") < 1
    assert seen == {"loop": "greenlet", "answers_in_order": True, "cancelled": True, "error": "from the loop"}


GREENLET_COPY = """
from gevent import monkey
monkey.patch_all()
import json, subprocess, sys
from pathlib import Path
import gevent
from cartwheel import bus, subjects
from cartwheel.settings import Settings
from services.gateway.bridge import NatsBridge

nats_url, var_dir = sys.argv[1], Path(sys.argv[2])
settings = Settings(nats_url=nats_url, var_dir=var_dir, secret="s" * 32)
bridge = NatsBridge(settings)
bridge.start(wait=10)
bridge.call(lambda: bus.declare_topology(bridge.js, settings), 10)
key = subjects.catalog_cache_key("default", "00000000-0000-4000-8000-000000000001")

async def put(value):
    await (await bridge.key_value(subjects.CATALOG_CACHE_BUCKET)).put(key, value)

bridge.call(put(b"old"), 5)
bridge.kv_get(subjects.CATALOG_CACHE_BUCKET, key)  # starts the copy
deadline = gevent.get_hub().loop.now() + 10
while not bridge.kv_is_local(subjects.CATALOG_CACHE_BUCKET):
    assert gevent.get_hub().loop.now() < deadline, "the copy never synced"
    gevent.sleep(0.02)

WRITER = '''
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    kv = await nc.jetstream().key_value(sys.argv[2])
    await kv.put(sys.argv[3], b"new")
    await nc.close()
asyncio.run(main())
'''
seen = []
for _ in range(3):
    bridge.call(put(b"old"), 5)
    gevent.sleep(0.2)  # the copy has "old"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, nats_url, subjects.CATALOG_CACHE_BUCKET, key])
    busy = monkey.get_original("time", "sleep")  # this worker is busy: the writer's change waits unread
    for _ in range(600):  # until the writer is done (60 s at most), never yielding to the bridge's loop
        if writer.poll() is not None:
            break
        busy(0.1)
    assert writer.poll() == 0, "the writer did not finish while the worker was busy"
    readers = [gevent.spawn(bridge.kv_get, subjects.CATALOG_CACHE_BUCKET, key) for _ in range(20)]
    gevent.joinall(readers)
    seen.append(sorted({r.value.decode() for r in readers}))

async def drop():  # the bucket is shared with the other tests: leave no entry that isn't a product
    await (await bridge.key_value(subjects.CATALOG_CACHE_BUCKET)).purge(key)

bridge.call(drop(), 5)
bridge.close()
print(json.dumps(seen))
"""


def test_reads_of_the_catalog_copy_in_a_busy_gevent_worker_see_a_change_made_elsewhere(
    nats_url: str, tmp_path: Path
) -> None:
    """The gateway's real setting: greenlets sharing one catch-up check after the worker was busy.

    Another process changes a product while this worker's thread is blocked; then 20 reads start
    at once. All must see the change (the copy has not received it yet when they begin).
    """
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", GREENLET_COPY, nats_url, str(tmp_path)],
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [["new"]] * 3
