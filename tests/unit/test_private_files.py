"""What the shop writes in var/ is its user's alone: 0600 files, 0700 folders, secrets never readable by others."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from cartwheel.db import make_engine
from cartwheel.natsserver import NatsServer, spawn
from cartwheel.settings import Settings

WIDE_UMASK = 0o022  # a common login default: files 0644, folders 0755 unless the shop says otherwise


@pytest.fixture(autouse=True)
def wide_umask() -> Iterator[None]:
    previous = os.umask(WIDE_UMASK)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_by_others(folder: Path) -> dict[str, int]:
    """Everything under ``folder`` that its group or anyone else may read, with its mode."""
    found = [folder, *folder.rglob("*")]
    return {str(path.relative_to(folder)): mode(path) for path in found if mode(path) & 0o077}


def test_secrets_are_never_on_disk_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    var = tmp_path / "var"
    seen: list[dict[str, int]] = []

    def spy(name: str) -> None:
        real = getattr(os, name)

        def look_then_call(*args: Any, **kwargs: Any) -> Any:
            if var.exists():
                seen.append(readable_by_others(var))  # the folder and every file, at each step of the write
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, look_then_call)

    for name in ("chmod", "fsync", "link", "replace", "rename"):
        spy(name)
    settings = Settings(var_dir=var).with_secrets()
    assert settings.secret is not None and seen
    assert seen == [{}] * len(seen)
    assert (mode(var), mode(var / "secrets.json")) == (0o700, 0o600)
    assert [p.name for p in var.iterdir()] == ["secrets.json"]  # no temp file left behind


def test_a_sqlite_database_and_its_journals_are_private(tmp_path: Path) -> None:
    database = tmp_path / "var" / "gateway.db"
    engine = make_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE users (email TEXT)"))
        connection.execute(text("INSERT INTO users VALUES ('a@example.test')"))
        assert {p.name for p in database.parent.iterdir()} >= {"gateway.db", "gateway.db-wal"}
        assert readable_by_others(database.parent) == {}
    engine.dispose()


def test_the_nats_config_and_data_folder_are_private(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "var" / "nats", 4299)
    assert mode(server.write_config()) == 0o600 and mode(tmp_path / "var" / "nats") == 0o700


def test_every_child_process_starts_with_the_private_umask() -> None:
    child = spawn([sys.executable, "-c", "import os; print(oct(os.umask(0)))"], output=subprocess.PIPE)
    out, _ = child.communicate(timeout=30)
    assert out.decode().strip() == "0o77"


def test_the_cli_migrates_into_a_private_var(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTWHEEL_")} | {"CARTWHEEL_VAR_DIR": str(var)}
    subprocess.run([sys.executable, "-m", "cartwheel.cli", "migrate", "gateway"], env=env, check=True,
                   capture_output=True, timeout=60)
    assert (var / "gateway.db").exists() and (var / "secrets.json").exists()
    assert readable_by_others(var) == {}
