"""Every gateway app a unit test makes has its own migrated accounts database (sessions, the limiter's counts):
admin checks read it, and one test's wrong tokens must not count against the next."""

from __future__ import annotations

from pathlib import Path

import pytest

from cartwheel.db import migrate


@pytest.fixture(scope="session")
def migrated_gateway_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gateway") / "template.db"
    migrate("gateway", f"sqlite:///{path}")
    return path


@pytest.fixture(autouse=True)
def gateway_database_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """A migrated copy for this test (faster than migrating each time), given to Settings() by environment."""
    if not request.module.__name__.rsplit(".", 1)[-1].startswith("test_gateway"):
        return None
    copy = tmp_path / "gateway.db"
    copy.write_bytes(request.getfixturevalue("migrated_gateway_db").read_bytes())
    url = f"sqlite:///{copy}"
    monkeypatch.setenv("CARTWHEEL_GATEWAY_DATABASE_URL", url)
    return url
