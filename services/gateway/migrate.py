"""Migrate the gateway's database once, in gunicorn's master, before any worker is forked.

The migration runs in a forked child: the master stays free of SQLAlchemy and psycopg, which must
be imported after gevent patches a worker (psycopg picks a gevent-friendly wait at import).
Replicas starting together take turns (:func:`cartwheel.db.migrate` holds an advisory lock).
"""

from __future__ import annotations

import logging
import multiprocessing

from cartwheel.settings import Settings

log = logging.getLogger("cartwheel.gateway.server")


def migrate_database(settings: Settings) -> bool:
    """Bring the gateway database to the newest revision; False (and logged) if that failed."""
    child = multiprocessing.get_context("fork").Process(
        target=_migrate, args=(settings.database_url("gateway"),), name="gateway-migrate"
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        log.error("migrating the gateway database failed (exit code %s); see the traceback above", child.exitcode)
        return False
    log.info("gateway database migrated")
    return True


def _migrate(url: str) -> None:
    from cartwheel.db import migrate

    migrate("gateway", url)
