"""Which tenant the work in hand is for: set where a message comes in (a request, an event, a lane command, an
HTTP request's Host), read where a database or a cache key is chosen."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token

_own = "default"  # the installation's own tenant (settings.tenant), as the process set it at start
_current: ContextVar[str | None] = ContextVar("cartwheel_tenant", default=None)


def set_own(tenant: str) -> None:
    """Name the installation's own tenant (``settings.tenant``): what :func:`current` says outside any tenant's
    work. A service and the gateway call it as they start."""
    global _own
    _own = tenant
_background: ContextVar[bool] = ContextVar("cartwheel_tenant_background", default=False)


def current(default: str | None = None) -> str:
    """The tenant of the work in hand; outside any tenant's work ``default``, else the installation's own."""
    return _current.get() or default or _own


@contextlib.contextmanager
def serving(tenant: str, *, background: bool = False) -> Iterator[None]:
    """Everything inside (and the tasks it starts) works for ``tenant``. ``background``: upkeep, not a shopper's
    work: a database it opens is the first to be closed again (it does not push busy tenants' out)."""
    token, quiet = _current.set(tenant), _background.set(background)
    try:
        yield
    finally:
        _background.reset(quiet)
        _current.reset(token)


def serving_now() -> str | None:
    """The tenant set by :func:`serving` or :func:`enter`, None outside any (log lines name it when set)."""
    return _current.get()


def in_background() -> bool:
    return _background.get()


def enter(tenant: str | None) -> Token[str | None]:
    """:func:`serving` for code that can't hold a ``with`` (undo with :func:`leave`); None keeps the default."""
    return _current.set(tenant)


def leave(token: Token[str | None]) -> None:
    _current.reset(token)
