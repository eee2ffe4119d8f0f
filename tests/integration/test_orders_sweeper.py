"""The orders sweeper's look at a quiet tenant: its SQLite file read on a connection of its own, its database opened
only when there is work (the saga's steps are the sweeper's port here; the saga tests sweep with the real ones)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from cartwheel.contracts.base import utcnow
from cartwheel.db import make_engine, migrate
from cartwheel.settings import Settings
from cartwheel.tenants import context
from cartwheel.tenants.databases import TenantDatabases
from services.orders import sweeper as sweeping
from services.orders.models import OrderRow


class Steps:
    """The saga as the sweeper sees it: the orders each step was asked for."""

    def __init__(self, service: SimpleNamespace) -> None:
        self.service, self.settings = service, service.settings
        self.claims = SimpleNamespace(held=self._held)
        self.expired: list[str] = []

    @contextlib.asynccontextmanager
    async def _held(self, order_id: str, wait: float | None = None) -> AsyncIterator[None]:
        yield

    async def expire(self, order_id: str) -> None:
        self.expired.append(order_id)

    async def resume(self, order_id: str) -> None:
        raise AssertionError(f"no order here stalls: {order_id}")

    cancel_intent_again = refund_again = resume

    async def give_up(self, order_id: str, reason: str) -> None:
        raise AssertionError(f"no step here fails: {order_id} ({reason})")


def test_a_quiet_tenants_orders_are_swept_without_opening_its_database_until_there_is_work(tmp_path: Path) -> None:
    """With 1,000 tenants registered, the sweeper opened a quiet tenant's database (an engine, its statements
    compiled afresh, its relay) 4 times a second to find nothing: most of an idle orders service's CPU."""
    settings = Settings(var_dir=tmp_path, reservation_ttl_seconds=600)
    url = settings.database_url("orders", "calm")
    migrate("orders", url)
    dbs = TenantDatabases("orders", settings)
    steps = Steps(SimpleNamespace(db=dbs, settings=settings))
    sweeper = sweeping.Sweeper(steps)  # type: ignore[arg-type]

    def sweep() -> float:
        with context.serving("calm", background=True):
            return asyncio.run(sweeper.sweep())

    try:
        assert sweep() == sweeping.SWEEP_IDLE and steps.expired == []
        assert dbs.closed_file("calm") == Path(make_url(url).database or "")  # still closed: nothing to do
        engine = make_engine(url)  # an order placed before a restart, its reservation run out since
        now = utcnow()
        with sessionmaker(engine).begin() as session:
            session.add(OrderRow(id="o-late", tenant="calm", status="awaiting_payment", version=1, currency="EUR",
                                 total_cents=100, lines="[]", reservation="o-late", created_at=now, updated_at=now,
                                 reserved_until=now - timedelta(seconds=1)))
        engine.dispose()
        assert sweep() == sweeping.SWEEP_EVERY and steps.expired == ["o-late"]
        assert dbs.closed_file("calm") is None  # opened for the work (the saga's step writes through it)
    finally:
        dbs.close()


def test_a_closed_file_the_sweepers_reads_fail_on_is_opened_so_that_the_error_shows(tmp_path: Path) -> None:
    """A file of an older schema (here: a column the reads name is missing) is not passed over as "nothing to do":
    the sweep opens the database, and its error is raised where the tenant's rounds log it."""
    settings = Settings(var_dir=tmp_path)
    url = settings.database_url("orders", "old")
    migrate("orders", url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE orders RENAME COLUMN reserved_until TO reserved_till")
    engine.dispose()
    dbs = TenantDatabases("orders", settings)
    sweeper = sweeping.Sweeper(Steps(SimpleNamespace(db=dbs, settings=settings)))  # type: ignore[arg-type]
    try:
        with context.serving("old", background=True), pytest.raises(OperationalError, match="reserved_until"):
            asyncio.run(sweeper.sweep())
        assert dbs.closed_file("old") is None  # opened: its error is the database's own
    finally:
        dbs.close()
