"""Failed sign-ins per account *from one address* and per client address, and registrations per client address,
counted over a sliding window in the gateway database.

The account limit is kept per address: a stranger's wrong passwords use up the stranger's own tries at the
account, never its owner's, so nobody can lock an owner out by guessing (as keying by account alone let
anyone do with 5 requests every 15 minutes). Guessing one account from many addresses is bounded by each
address's own limit (and argon2's cost per guess).

The database is shared by every worker and replica, so the limit holds across all of them. An attempt
is recorded *before* its password is checked and counted after that record is committed: of the
attempts racing each other, at most ``limit`` see room, so a burst gets no extra guesses. A success
removes its own record and the account's failures; a 429 removes its record, so refused attempts
never lengthen the wait. Registrations are counted whether they succeed or not: each one costs a hash,
and an address creating account after account is what the limit is for.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.gateway import guard
from services.gateway.context import gateway
from services.gateway.errors import ApiError
from services.gateway.models import LoginAttemptRow
from services.gateway.store import now, read, write

ACCOUNT, IP, SIGNUP, ADMIN = "account", "ip", "signup", "admin"


@dataclass(frozen=True)
class Limit:
    scope: str
    key: str
    max_failures: int


@dataclass(frozen=True)
class Attempt:
    """A sign-in under way: its rows in ``login_attempts``."""

    account: str  # the account-and-address key whose failures a success forgives ("" for the admin token)
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
    """This request's client address (:func:`services.gateway.guard.client_address`, behind ``trusted_proxies``)."""
    return guard.client_address(request.environ, gateway().settings.trusted_proxies)


def limits_for(email: str, address: str) -> list[Limit]:
    settings = gateway().settings
    return [
        Limit(ACCOUNT, account_key(email, address), settings.login_max_failures_per_email),
        Limit(IP, address, settings.login_max_failures_per_ip),
    ]


def account_key(email: str, address: str) -> str:
    """The key of an account's failures from one address (hashed: an email may fill the column alone)."""
    return hashlib.sha256(f"{email}\n{address}".encode()).hexdigest()


def begin_attempt(email: str, address: str) -> Attempt:
    """Record a sign-in attempt, or refuse it with 429 ``too_many_attempts`` and Retry-After."""
    return Attempt(account_key(email, address), _record(limits_for(email, address)))


def begin_admin_attempt(address: str) -> Attempt:
    """Record a try of the admin token from ``address`` (the per-address sign-in limit), or refuse it with 429."""
    return Attempt("", _record(_admin_limits(address)))


def refuse_admin_guesses(address: str) -> None:
    """429 when ``address`` has used up its wrong admin tokens (the bearer API's check, a read per request)."""
    _refuse_if_full(_admin_limits(address), ())


def count_wrong_admin_token(address: str) -> None:
    """A wrong bearer token from ``address``: counted against the same limit as the sign-in page's."""
    _record(_admin_limits(address))


def _admin_limits(address: str) -> list[Limit]:
    return [Limit(ADMIN, address, gateway().settings.login_max_failures_per_ip)]


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
            delete(LoginAttemptRow).where(LoginAttemptRow.scope == ACCOUNT, LoginAttemptRow.key == attempt.account)
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
