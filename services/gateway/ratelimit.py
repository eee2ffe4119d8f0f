"""Failed sign-ins per account and per client address, and registrations per client address, counted over a
sliding window in the gateway database.

The database is shared by every worker and replica, so the limit holds across all of them. An attempt
is recorded *before* its password is checked and counted after that record is committed: of the
attempts racing each other, at most ``limit`` see room, so a burst gets no extra guesses. A success
removes its own record and the account's failures; a 429 removes its record, so refused attempts
never lengthen the wait. Registrations are counted whether they succeed or not: each one costs a hash,
and an address creating account after account is what the limit is for.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.gateway.context import gateway
from services.gateway.errors import ApiError
from services.gateway.models import LoginAttemptRow
from services.gateway.store import now, read, write

EMAIL, IP, SIGNUP, ADMIN = "email", "ip", "signup", "admin"


@dataclass(frozen=True)
class Limit:
    scope: str
    key: str
    max_failures: int


@dataclass(frozen=True)
class Attempt:
    """A sign-in under way: its rows in ``login_attempts``."""

    email: str
    row_ids: tuple[int, ...]


def wait_seconds(recent: list[datetime], max_failures: int, window: timedelta, at: datetime) -> int | None:
    """Seconds until one more attempt fits, given the newest failures (newest first, up to ``max_failures``).

    None when there is room now.
    """
    if len(recent) < max_failures:
        return None
    frees_at = recent[max_failures - 1] + window  # the oldest failure that still fills the limit leaves then
    return max(1, math.ceil((frees_at - at).total_seconds()))


def client_address() -> str:
    """The client's address, as werkzeug's ProxyFix reads it: X-Forwarded-For only past ``trusted_proxies`` hops.

    An IPv6 client counts as its /64: one subscriber gets a whole /64, so one address per guess costs nothing.
    """
    address = request.remote_addr or "unknown"
    trusted = gateway().settings.trusted_proxies
    if trusted:
        hops = [hop.strip() for hop in ",".join(request.headers.getlist("X-Forwarded-For")).split(",")]
        if len(hops) >= trusted and hops[-trusted]:
            address = hops[-trusted]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def limits_for(email: str, address: str) -> list[Limit]:
    settings = gateway().settings
    return [
        Limit(EMAIL, email, settings.login_max_failures_per_email),
        Limit(IP, address, settings.login_max_failures_per_ip),
    ]


def begin_attempt(email: str, address: str) -> Attempt:
    """Record a sign-in attempt, or refuse it with 429 ``too_many_attempts`` and Retry-After."""
    return Attempt(email, _record(limits_for(email, address)))


def begin_admin_attempt(address: str) -> Attempt:
    """Record a try of the admin token from ``address`` (the per-address sign-in limit), or refuse it with 429."""
    return Attempt("", _record([Limit(ADMIN, address, gateway().settings.login_max_failures_per_ip)]))


def count_registration(address: str) -> None:
    """Record a registration from ``address``, or refuse it with 429 when the address has made its share."""
    _record([Limit(SIGNUP, address, gateway().settings.register_max_per_ip)])


def _record(limits: list[Limit]) -> tuple[int, ...]:
    """Record one attempt under each limit and return its rows; 429 (and nothing recorded) when one is full."""
    _refuse_if_full(limits, ())  # the common refusal costs no write
    at = now()
    cutoff = at - _window()

    def record(session: Session) -> tuple[int, ...]:
        session.execute(delete(LoginAttemptRow).where(LoginAttemptRow.attempted_at < cutoff))
        rows = [LoginAttemptRow(scope=limit.scope, key=limit.key, attempted_at=at) for limit in limits]
        session.add_all(rows)
        session.flush()
        return tuple(row.id for row in rows)

    row_ids = write(record)
    try:
        _refuse_if_full(limits, row_ids)
    except ApiError:
        _forget(row_ids)
        raise
    return row_ids


def attempt_succeeded(attempt: Attempt) -> None:
    """The password was right: this attempt was no failure, and the account's earlier failures are forgiven."""

    def clear(session: Session) -> None:
        session.execute(delete(LoginAttemptRow).where(LoginAttemptRow.id.in_(attempt.row_ids)))
        session.execute(
            delete(LoginAttemptRow).where(LoginAttemptRow.scope == EMAIL, LoginAttemptRow.key == attempt.email)
        )

    write(clear)


def _forget(row_ids: tuple[int, ...]) -> None:
    write(lambda session: session.execute(delete(LoginAttemptRow).where(LoginAttemptRow.id.in_(row_ids))))


def _refuse_if_full(limits: list[Limit], own: tuple[int, ...]) -> None:
    at = now()
    window = _window()

    def newest(session: Session, limit: Limit) -> list[datetime]:
        query = (
            select(LoginAttemptRow.attempted_at)
            .where(
                LoginAttemptRow.scope == limit.scope,
                LoginAttemptRow.key == limit.key,
                LoginAttemptRow.attempted_at > at - window,
                LoginAttemptRow.id.not_in(own),
            )
            .order_by(LoginAttemptRow.attempted_at.desc())
            .limit(limit.max_failures)
        )
        return list(session.scalars(query))

    recent = read(lambda session: [newest(session, limit) for limit in limits])
    waits = [wait_seconds(times, limit.max_failures, window, at) for times, limit in zip(recent, limits, strict=True)]
    longest = max((w for w in waits if w is not None), default=None)
    if longest is not None:
        raise ApiError(
            429,
            "too_many_attempts",
            "too many attempts from here; try again later",
            {"Retry-After": str(longest)},
            retry_after=longest,
        )


def _window() -> timedelta:
    return timedelta(seconds=gateway().settings.login_failure_window_seconds)
