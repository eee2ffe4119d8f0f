"""The gateway's database (accounts, sessions, failed sign-ins) and the queries on it: one per tenant, the
request's (a shopper registered at one shop is unknown at another, and so are their sessions).

Each worker process opens the installation's own on first use, another tenant's on its first request (after
gunicorn forks and gevent patches), never at import.
On SQLite a transaction must never wait on anything but SQL (no bus request, no password hashing):
another greenlet of the same worker that wants the write lock would block the whole process.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from flask import current_app
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import InterfaceError as DBInterfaceError
from sqlalchemy.orm import Session

from cartwheel.db import Database
from cartwheel.errors import ServiceUnavailable
from cartwheel.tenants.databases import TenantDatabases
from services.gateway.context import gateway, tenant
from services.gateway.models import AdminSessionRow, DownloadRow, SessionRow, UserRow

T = TypeVar("T")
EXTENSION = "cartwheel.gateway.db"
POOL_SIZE = 5  # per worker; greenlets queue for a connection, and PostgreSQL's connections are shared by all
_opening = threading.Lock()  # a gevent lock in the workers (patched)


@dataclass(frozen=True)
class User:
    id: str
    email: str
    password_hash: str
    cart_id: str | None


class EmailTaken(Exception):
    pass


def now() -> datetime:
    return datetime.now(UTC)


def accounts_db() -> Database:
    """The gateway database of the request's tenant, opened on first use."""
    return databases().of(tenant())


def databases() -> TenantDatabases:
    """This app's gateway databases, one per tenant (the own opened now, the others on their first request)."""
    extensions = current_app.extensions
    if EXTENSION not in extensions:
        with _opening:
            if EXTENSION not in extensions:
                extensions[EXTENSION] = TenantDatabases("gateway", gateway().settings, pool_size=POOL_SIZE)
    return extensions[EXTENSION]


@contextmanager
def _reachable() -> Iterator[None]:
    """A database that is down or locked is a 503 with Retry-After, not a 500."""
    try:
        yield
    except (OperationalError, DBInterfaceError) as error:
        raise ServiceUnavailable("gateway database", str(error.orig or error)[:200]) from error


def write(work: Callable[[Session], T]) -> T:
    with _reachable():
        return accounts_db().run_sync(work)


def read(work: Callable[[Session], T]) -> T:
    with _reachable():
        return accounts_db().read_sync(work)


def _user(row: UserRow) -> User:
    return User(row.id, row.email, row.password_hash, row.cart_id)


# -- users ------------------------------------------------------------------------------------------------


def create_user(email: str, password_hash: str) -> User:
    row = UserRow(id=uuid.uuid4().hex, email=email, password_hash=password_hash, created_at=now(), cart_id=None)

    def insert(session: Session) -> None:
        session.add(row)
        session.flush()

    try:
        write(insert)
    except IntegrityError:
        raise EmailTaken(email) from None
    return _user(row)


def user_by_email(email: str) -> User | None:
    def find(session: Session) -> User | None:
        row = session.scalar(select(UserRow).where(UserRow.email == email))
        return _user(row) if row else None

    return read(find)


def set_password_hash(user_id: str, password_hash: str) -> None:
    change = update(UserRow).where(UserRow.id == user_id).values(password_hash=password_hash)
    write(lambda session: session.execute(change))


def give_cart(user_id: str, cart_id: str, replacing: str | None = None) -> str:
    """The user's cart id: ``cart_id`` if they had none (or had the closed cart ``replacing``), else the one
    another request gave them first."""
    had = UserRow.cart_id.is_(None) if replacing is None else UserRow.cart_id == replacing

    def assign(session: Session) -> str:
        session.execute(update(UserRow).where(UserRow.id == user_id, had).values(cart_id=cart_id))
        current = session.scalar(select(UserRow.cart_id).where(UserRow.id == user_id))
        return current or cart_id

    return write(assign)


# -- sessions ---------------------------------------------------------------------------------------------


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(token: str, user_id: str, expires_at: datetime) -> None:
    def insert(session: Session) -> None:
        # Expired sessions go as new ones come: the table holds live sign-ins only.
        session.execute(delete(SessionRow).where(SessionRow.expires_at <= now()))
        session.add(SessionRow(id=session_id(token), user_id=user_id, created_at=now(), expires_at=expires_at))

    write(insert)


def user_of_session(token: str) -> User | None:
    def find(session: Session) -> User | None:
        row = session.scalar(
            select(UserRow)
            .join(SessionRow, SessionRow.user_id == UserRow.id)
            .where(SessionRow.id == session_id(token), SessionRow.expires_at > now())
        )
        return _user(row) if row else None

    return read(find)


def end_session(token: str) -> None:
    write(lambda session: session.execute(delete(SessionRow).where(SessionRow.id == session_id(token))))


def start_admin_session(token: str, expires_at: datetime) -> None:
    def insert(session: Session) -> None:
        session.execute(delete(AdminSessionRow).where(AdminSessionRow.expires_at <= now()))
        session.add(AdminSessionRow(id=session_id(token), created_at=now(), expires_at=expires_at))

    write(insert)


def admin_session_lives(token: str) -> bool:
    row = AdminSessionRow
    query = select(row.id).where(row.id == session_id(token), row.expires_at > now())
    return read(lambda session: session.scalar(query)) is not None


def end_admin_session(token: str) -> None:
    write(lambda session: session.execute(delete(AdminSessionRow).where(AdminSessionRow.id == session_id(token))))


# -- downloads --------------------------------------------------------------------------------------------


def count_download(order_id: str, product_id: str, sending: int, budget: int, whole: bool) -> int | None:
    """Count ``sending`` more bytes of the order's product (``whole``: a download from its first byte): the
    downloads from the start so far, or None when they would pass ``budget`` bytes (nothing counted). Two at
    once never both take the last of it: the row is locked (PostgreSQL) or the database is (SQLite) from the
    read to the write."""

    def take(session: Session) -> int | None:
        at = now()
        row = session.get(DownloadRow, (order_id, product_id), with_for_update=True)
        if row is None:
            try:
                with session.begin_nested():
                    row = DownloadRow(order_id=order_id, product_id=product_id, count=0, bytes=0, last_at=at)
                    session.add(row)
            except IntegrityError:  # another request made the row first: take it as it is now
                row = session.get(DownloadRow, (order_id, product_id), with_for_update=True, populate_existing=True)
                assert row is not None
        if row.bytes + sending > budget:
            return None
        row.bytes, row.count, row.last_at = row.bytes + sending, row.count + int(whole), at
        return row.count

    return write(take)
