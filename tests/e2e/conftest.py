"""The whole shop, started once per session the way ``cartwheel up`` starts it, driven over HTTP.

Every test under ``tests/e2e`` gets the ``e2e`` marker (``pytest -m "not e2e"`` skips them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cartwheel.natsserver import free_port
from cartwheel.settings import Settings
from cartwheel.supervisor import StartupError, System

HERE = Path(__file__).resolve().parent
_log: dict[str, Path] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, path in _log.items():
        what = "the shop's" if name == "system" else f"{name}'s"
        terminalreporter.write_line(f"e2e: {what} output (every process, prefixed) is in {path}")


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The running shop (a started System): ``base_url`` (``http://127.0.0.1:PORT``), ``admin_token``, ``settings``."""
    yield from run_shop(tmp_path_factory, "system")


@pytest.fixture(scope="module")
def paced_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A second shop whose payments call Stripe once in 4 s and never make a checkout wait for its turn: a checkout
    whose intent's turn has not come is placed `reserved`, its intent queued and its client secret to follow."""
    yield from run_shop(tmp_path_factory, "paced shop", stripe_requests_per_second=0.25,
                        stripe_checkout_wait_seconds=0)


def run_shop(tmp_path_factory: pytest.TempPathFactory, name: str, **settings: Any) -> Iterator[System]:
    """A shop started as ``cartwheel up`` starts it, with ``settings`` changed; its output in ``<var>/system.log``."""
    var_dir = tmp_path_factory.mktemp("shop")
    options: dict[str, Any] = {"var_dir": var_dir, "nats_url": f"nats://127.0.0.1:{free_port()}",
                               "embedded_nats": True, "gateway_host": "127.0.0.1", "gateway_port": free_port(),
                               "metrics_port": 0}
    log_path = var_dir / "system.log"
    _log[name] = log_path
    with log_path.open("w", encoding="utf-8") as log:
        shop = System(Settings(**options | settings), out=log, colour=False)
        try:
            shop.start()
        except StartupError as exc:
            pytest.fail(f"the shop did not start: {exc}\n(full output: {log_path})", pytrace=False)
        try:
            yield shop
        finally:
            shop.stop()
            if shop.unexpected_exits:
                died = ", ".join(f"{name} ({code})" for name, code in shop.unexpected_exits.items())
                print(f"\ne2e: processes died during the session: {died}; see {log_path}")
