"""Files the shop writes (var/: databases, secrets, NATS data): its own user's alone, 0600 files in 0700 folders.

The supervisor and the CLI give every process they start the umask :data:`PRIVATE_UMASK`, so files
made by code that takes no mode (nats-server, SQLite's journals, prometheus_client) are private too;
what Cartwheel writes itself gets its mode here, explicitly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path, *, narrow: bool = False) -> Path:
    """Make ``path`` a folder only its owner may enter; ``narrow`` also tightens one that exists wider
    (the shop's own var/, which older versions made 0755). Missing parents get the umask's mode."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if narrow and stat.S_IMODE(path.stat().st_mode) & ~PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite's journals then copy that mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE))


def write_private(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically and never readable by others: a temp file created 0600,
    synced, then renamed over ``path`` — or, with ``replace=False``, linked to it only if it does not
    exist yet (False then: another process wrote it first, and its file stands)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        _sync_folder(path.parent)  # the new name survives a power cut
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _sync_folder(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
