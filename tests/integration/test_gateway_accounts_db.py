"""Accounts on real databases (SQLite and PostgreSQL) and on the real gevent server.

Two apps on one database stand for two gateway replicas (or two gunicorn workers): sessions and
the sign-in limiter must hold across them.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from cartwheel import natsserver
from cartwheel.contracts.cart import AddToCart, GetCart, MergeCarts
from cartwheel.db import make_engine, migrate
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.models import Base, LoginAttemptRow, SessionRow
from services.gateway.session import SESSION_COOKIE
from services.gateway.testing import FakeBus
from tests.integration.test_gateway_server import start_gateway
from tests.unit.test_gateway_accounts import PASSWORD, MergingCarts, login, new_email, register

SECRET = "integration-secret-" + "s" * 20


@pytest.fixture
def gateway_db(database_url: str) -> str:
    migrate("gateway", database_url)
    return database_url


@pytest.fixture
def replicas(gateway_db: str) -> tuple[Any, FakeBus]:
    """``replica(**settings)`` makes a test client of a new app on the shared database and fake bus."""
    carts = MergingCarts()
    bus = FakeBus({GetCart: carts.get, AddToCart: carts.add, MergeCarts: carts.merge})

    def replica(**settings: Any) -> FlaskClient:
        options = {"admin_token": "t", "secret": SECRET, "gateway_database_url": gateway_db} | settings
        return create_app(Settings(**options), bus).test_client()

    return replica, bus


def count(url: str, model: type[Base]) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(model)).scalar_one()
    finally:
        engine.dispose()


def test_the_migration_makes_the_models_tables(gateway_db: str) -> None:
    migrate("gateway", gateway_db)  # a second migrator (another replica) finds nothing to do
    engine = make_engine(gateway_db)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def test_a_session_holds_across_replicas_until_signed_out(replicas: tuple[Any, FakeBus]) -> None:
    replica, _ = replicas
    first, second = replica(), replica()
    email = new_email()
    assert register(first, email).status_code == 201
    assert login(first, email).status_code == 200
    cookie = first.get_cookie(SESSION_COOKIE)
    assert cookie is not None
    second.set_cookie(SESSION_COOKIE, cookie.value)
    assert second.get("/api/auth/me").get_json()["email"] == email.lower()
    assert second.post("/api/auth/logout").status_code == 204
    assert first.get("/api/auth/me").status_code == 401


def test_a_burst_of_guesses_across_replicas_gets_no_more_than_the_limit(
    replicas: tuple[Any, FakeBus], gateway_db: str
) -> None:
    replica, _ = replicas
    apps = [replica(), replica()]
    email = new_email()
    register(apps[0], email)

    def guess(i: int) -> int:
        return login(apps[i % 2], email, f"wrong guess {i}").status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = Counter(pool.map(guess, range(24)))
    assert set(statuses) <= {401, 429} and statuses[401] <= 5, statuses
    # Refused attempts left nothing behind (the one more row counts the registration).
    assert count(gateway_db, LoginAttemptRow) == 2 * statuses[401] + 1
    # Racing attempts may refuse each other (never admit too many): one at a time, the rest fit exactly.
    later = [guess(i) for i in range(5 - statuses[401] + 1)]
    assert later == [401] * (5 - statuses[401]) + [429]
    assert login(apps[0], email).status_code == 429  # the right password waits too


def test_a_user_gets_one_cart_when_two_devices_add_at_once(replicas: tuple[Any, FakeBus]) -> None:
    replica, bus = replicas
    email = new_email()
    devices = [replica() for _ in range(6)]
    register(devices[0], email)
    for device in devices:
        assert login(device, email).status_code == 200
    body = {"product_id": "0b7e4c1e-2f5d-4a3b-9c8d-1e2f3a4b5c6d", "quantity": 1}
    with ThreadPoolExecutor(len(devices)) as pool:
        assert set(pool.map(lambda d: d.post("/api/cart/items", json=body).status_code, devices)) == {200}
    assert len({m.cart_id for m in bus.sent if isinstance(m, AddToCart)}) == 1


def test_expired_sessions_are_swept_when_new_ones_start(replicas: tuple[Any, FakeBus], gateway_db: str) -> None:
    replica, _ = replicas
    client = replica()
    email = new_email()
    register(client, email)
    login(client, email)
    engine = make_engine(gateway_db)
    try:
        with engine.begin() as conn:
            conn.execute(update(SessionRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    finally:
        engine.dispose()
    assert client.get("/api/auth/me").status_code == 401
    login(client, email)
    assert count(gateway_db, SessionRow) == 1  # the new one only


# -- the real server: hashing runs beside the other requests ------------------------------------------


@pytest.fixture(scope="module")
def server(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The gateway under gunicorn with one gevent worker; it migrates its own database at start."""
    gateway = start_gateway(nats_url, tmp_path_factory.mktemp("accounts"), workers=1)
    yield gateway
    natsserver.terminate(gateway.process)


def test_the_server_migrates_its_database_at_start(server: Any) -> None:
    var = Path(server.log).parent / "var"
    assert (var / "gateway.db").exists()
    assert "gateway database migrated" in server.output()


def test_sign_ins_do_not_stall_other_requests_of_the_worker(server: Any) -> None:
    email = f"shopper-{uuid.uuid4().hex[:10]}@example.com"
    url = server.url
    assert requests.post(f"{url}/api/auth/register", json={"email": email, "password": PASSWORD}, timeout=15).ok

    def sign_in(_: int) -> float:
        started = time.perf_counter()
        body = {"email": email, "password": PASSWORD}
        assert requests.post(f"{url}/api/auth/login", json=body, timeout=30).status_code == 200
        return time.perf_counter() - started

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(sign_in, i) for i in range(8)]  # each one argon2 verify of ~0.1 s
        health = []
        while not all(p.done() for p in pending):
            started = time.perf_counter()
            assert requests.get(f"{url}/healthz", timeout=15).status_code == 200
            health.append(time.perf_counter() - started)
        sign_ins = [p.result() for p in pending]
    # Hashed on the loop, a /healthz would wait for the hashes queued before it (0.1 s each).
    assert len(health) >= 5 and statistics.median(health) < 0.05, (health, sign_ins)


def test_a_download_limit_holds_when_replicas_count_at_once(gateway_db: str) -> None:
    """Twenty downloads of one order's file at once, through two apps on the same database: exactly what the
    budget holds (5 of 100 bytes in 500) are counted, each number once (SQLite and PostgreSQL)."""
    from services.gateway import store

    apps = [create_app(Settings(admin_token="t", secret=SECRET, gateway_database_url=gateway_db), FakeBus())
            for _ in range(2)]
    order_id = f"ord_{uuid.uuid4().hex}"

    def download(n: int) -> int | None:
        with apps[n % 2].test_request_context("/"):
            return store.count_download(order_id, "p1", sending=100, budget=500, whole=True)

    with ThreadPoolExecutor(max_workers=10) as pool:
        counted = list(pool.map(download, range(20)))
    assert sorted(c for c in counted if c is not None) == [1, 2, 3, 4, 5]
    assert counted.count(None) == 15
    with apps[0].test_request_context("/"):
        assert store.count_download(order_id, "p2", 100, 500, whole=True) == 1  # another product: its own count
        assert store.count_download(order_id, "p2", 400, 500, whole=False) == 1  # a resumed part: bytes only
        assert store.count_download(order_id, "p2", 1, 500, whole=False) is None
