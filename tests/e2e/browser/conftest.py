"""A real headless Chromium (Debian's ``chromium``, driven by Playwright) against the running shop.

Where Chromium or Playwright is missing the browser tests skip and say why; in CI (``CI`` set)
they fail instead, since ``.ci/run`` installs Chromium. Screenshots of every page land in
``test-artifacts/browser`` (printed at the end of the run).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cartwheel.supervisor import System
from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ENV = "CARTWHEEL_CHROMIUM"
_shots: list[Path] = []


def chromium_path() -> str | None:
    """``$CARTWHEEL_CHROMIUM`` when set, else Debian's chromium; None when it is not there."""
    chosen = os.environ.get(CHROMIUM_ENV)
    for candidate in [chosen] if chosen else ["/usr/bin/chromium", shutil.which("chromium")]:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI runs the browser tests: .ci/run installs chromium)", pytrace=False)
    pytest.skip(f"{reason}; install it (apt-get install chromium) to run the browser tests")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Chromium's path, once Playwright is known to be there too; skips (fails in CI) otherwise."""
    executable = chromium_path()
    if executable is None:
        _missing(f"no Chromium at {os.environ.get(CHROMIUM_ENV) or '/usr/bin/chromium'}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    return executable  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _chromium_first(chromium_executable: str) -> None:
    """Without Chromium, skip (or fail) before the shop is started for nothing."""


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def chromium(chromium_executable: str, system: System, artifacts: Path) -> Iterator[Any]:
    """The browser of one test module, launched after the shop is up (Playwright keeps an event loop of its
    own in this thread while it runs; the tests outside this folder never see it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:
    """A fresh browser profile (its own cookies); script errors and refused scripts or styles fail the test."""
    ctx = chromium.new_context(viewport={"width": 1100, "height": 800})
    ctx.set_default_timeout(15_000)
    errors: list[str] = []
    ctx.on("page", lambda page: page.on("pageerror", lambda error: errors.append(str(error))))
    ctx.on("console", lambda message: errors.append(message.text) if _script_error(message) else None)
    try:
        yield ctx
    finally:
        ctx.close()
    assert not errors, f"the pages reported errors: {errors}"


def _script_error(message: Any) -> bool:
    """A console error of a script or a policy; refused requests (a 404, a 422 page) are the tests' own business."""
    return message.type == "error" and not message.text.startswith("Failed to load resource")


@pytest.fixture
def shoot(request: pytest.FixtureRequest) -> Any:
    """``shoot(page, "step")`` saves a full-page screenshot as a test artifact."""

    def save(page: Any, step: str) -> Path:
        path = ARTIFACTS / f"{request.node.name}-{len(_shots):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        _shots.append(path)
        return path

    return save


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _shots:
        terminalreporter.write_line(f"browser: {len(_shots)} screenshots in {ARTIFACTS}")
