"""The whole shop, started once per session the way ``cartwheel up`` starts it, driven over HTTP.

Every test under ``tests/e2e`` gets the ``e2e`` marker (``pytest -m "not e2e"`` skips them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
    if "system" in _log:
        terminalreporter.write_line(f"e2e: the shop's output (every process, prefixed) is in {_log['system']}")


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The running shop (a started System): ``base_url`` (``http://127.0.0.1:PORT``), ``admin_token``, ``settings``."""
    var_dir = tmp_path_factory.mktemp("shop")
    settings = Settings(
        var_dir=var_dir,
        nats_url=f"nats://127.0.0.1:{free_port()}",
        embedded_nats=True,
        gateway_host="127.0.0.1",
        gateway_port=free_port(),
        metrics_port=0,
    )
    log_path = var_dir / "system.log"
    _log["system"] = log_path
    with log_path.open("w", encoding="utf-8") as log:
        shop = System(settings, out=log, colour=False)
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
