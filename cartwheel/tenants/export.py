"""``cartwheel tenants export NAME``: one tenant's data as one tarball, taken while the shop runs.

Inside: ``manifest.json`` (the registry's entry, each file's sha256 and schema revision), the tenant's product
images (``images/<product>/<sha256>``) and digital products' files (``files/<product>/<sha256>``), from the object
store, and each service's database: a SQLite file copied
with SQLite's online backup (a consistent snapshot beside live writers), or a ``pg_dump`` archive (custom
format: ``pg_restore`` reads it). The catalog and stock buckets are caches of the databases: not exported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cartwheel import subjects
from cartwheel.settings import DATABASES, Settings
from cartwheel.tenants.registry import Registry

FORMAT = 1


class ExportFailed(RuntimeError):
    pass


def export_tenant(settings: Settings, registry: Registry, name: str, out: Path) -> dict[str, Any]:
    """Write ``name``'s tarball to ``out`` (owner-only); its manifest."""
    tenant = registry.get(name)
    manifest: dict[str, Any] = {"format": FORMAT, "exported_at": datetime.now(UTC).isoformat(),
                                "tenant": tenant.public() | {"created_at": tenant.created_at.isoformat()},
                                "databases": {}}
    with tempfile.TemporaryDirectory(prefix=f"cartwheel-export-{name}-") as folder:
        files: list[Path] = []
        for service in DATABASES:
            url = settings.database_url(service, name)
            file = _copy(url, Path(folder), service)
            manifest["databases"][service] = {"file": f"databases/{file.name}", "sha256": _sha256(file),
                                              "bytes": file.stat().st_size, "revision": _revision(url),
                                              "backend": make_url(url).get_backend_name()}
            files.append(file)
        for kind, bucket in (("images", subjects.PRODUCT_IMAGES_BUCKET), ("files", subjects.PRODUCT_FILES_BUCKET)):
            objects = Path(folder) / kind
            manifest[kind] = _objects(settings, name, bucket, objects)
            files += sorted(objects.rglob("*")) if objects.exists() else []
        listing = Path(folder) / "manifest.json"
        listing.write_text(json.dumps(manifest, indent=2))
        partial = out.with_name(out.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # customers' data: the owner's alone
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(listing, arcname="manifest.json")
            for file in files:
                if file.is_file():
                    tar.add(file, arcname=file.relative_to(folder).as_posix())
        partial.replace(out)  # whole or not at all
    return manifest


def _objects(settings: Settings, tenant: str, bucket: str, folder: Path) -> dict[str, dict[str, Any]]:
    """Copy the tenant's objects in ``bucket`` into ``folder`` (named as it is); each one's name, type and sha256."""
    import asyncio

    import nats

    from cartwheel import natsauth

    async def copy() -> dict[str, dict[str, Any]]:
        nc = await nats.connect(settings.nats_servers, connect_timeout=5, max_reconnect_attempts=1,
                                reconnect_time_wait=0.2, **natsauth.connect_options(settings, natsauth.ADMIN))
        found: dict[str, dict[str, Any]] = {}
        try:
            store = await nc.jetstream().object_store(bucket)
            try:
                listed = await store.list()
            except nats.js.errors.NotFoundError:
                listed = []
            for info in listed:
                if info.deleted or not info.name.startswith(f"{tenant}/"):
                    continue
                data = (await store.get(info.name)).data or b""
                path = folder / info.name.removeprefix(f"{tenant}/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                found[info.name] = {"file": f"{folder.name}/{path.relative_to(folder).as_posix()}", "bytes": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest(),
                                    "content_type": (info.headers or {}).get("Content-Type")}
        finally:
            await nc.close()
        return found

    try:
        return asyncio.run(copy())
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise ExportFailed(f"the tenant's {folder.name} are in NATS, which could not be reached ({exc!r})") from None


def _copy(url: str, folder: Path, service: str) -> Path:
    (folder / "databases").mkdir(exist_ok=True)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        import sqlite3

        source = Path(parsed.database or "")
        if not source.exists():
            raise ExportFailed(f"{service}: no database at {source}")
        target = folder / "databases" / f"{service}.db"
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as live, sqlite3.connect(target) as copy:
            live.backup(copy)  # page by page, consistent, beside the service's writers
        return target
    target = folder / "databases" / f"{service}.dump"
    libpq = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={target}",
                           f"--dbname={libpq}"], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise ExportFailed(f"{service}: pg_dump failed: {done.stderr.strip()[:500]}")
    return target


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
