"""The admin's browser session: a signed, HttpOnly cookie (path /admin) holding a random session token, given
out for the admin token. The server keeps the session (its token's hash, in the gateway database) until it
expires or the admin signs out, so signing out ends every copy of the cookie; a changed admin token ends
every admin session. The session's CSRF token is derived from its token, never stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import g, redirect, request
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.http import dump_cookie

from cartwheel.errors import ServiceUnavailable
from services.gateway import store
from services.gateway.auth import admin_key, is_admin_token
from services.gateway.context import gateway, tenant
from services.gateway.cookies import secret
from services.gateway.web.internal import PageError

ADMIN_COOKIE = "cartwheel_admin"
ADMIN_SALT = "cartwheel.admin"
ADMIN_PATH = "/admin"
MAX_AGE = 8 * 3600  # a working day; then the token is asked again
CSRF_FIELD = "csrf_token"
_CSRF = "cartwheel_admin_csrf"  # this request's answer, in flask.g: one database read per request


def token_is_right(given: str) -> bool:
    """``given`` is the admin token of this host's tenant."""
    return is_admin_token(given)


def session_cookie() -> str:
    """Start an admin session: the ``Set-Cookie`` value that carries it."""
    token = secrets.token_urlsafe(32)
    store.start_admin_session(token, store.now() + timedelta(seconds=MAX_AGE))
    return _cookie(_serializer().dumps({"session": token, "key": _token_fingerprint()}), MAX_AGE)


def end_session() -> str:
    """Sign out: the session ends on the server, whoever holds a copy of the cookie; the clearing ``Set-Cookie``."""
    if (token := _session_token()) is not None:
        store.end_admin_session(token)
    return _cookie("", 0)


def csrf_token() -> str | None:
    """This request's admin session's CSRF token; None when there is no live admin session.

    Raises :class:`ServiceUnavailable` when the gateway database does not answer (see :func:`page_csrf_token`).
    """
    if _CSRF not in g:
        token = _session_token()
        live = token is not None and store.admin_session_lives(token)
        setattr(g, _CSRF, hmac.new(secret().encode(), f"csrf:{token}".encode(), hashlib.sha256).hexdigest()
                if live else None)
    return g.get(_CSRF)


def page_csrf_token() -> str | None:
    """:func:`csrf_token` for templates: None too when the database does not answer (an error page is shown)."""
    try:
        return csrf_token()
    except ServiceUnavailable:
        return None


def _session_token() -> str | None:
    """The session token of this request's cookie, if the cookie verifies and was given for today's admin token."""
    value = request.cookies.get(ADMIN_COOKIE)
    if not value:
        return None
    try:
        data = _serializer().loads(value, max_age=MAX_AGE)
    except BadData:
        return None
    if not isinstance(data, dict) or not hmac.compare_digest(str(data.get("key")), _token_fingerprint()):
        return None
    token = data.get("session")
    return token if isinstance(token, str) and 0 < len(token) <= 128 else None


def admin_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """An admin page: without a session, the sign-in page; a POST also needs the session's CSRF token."""

    @wraps(view)
    def guarded(**kwargs: Any) -> Any:
        token = csrf_token()  # the gateway database down: the pages' 503 page
        if token is None:
            return redirect(ADMIN_PATH, code=303)
        if request.method == "POST" and not hmac.compare_digest(request.form.get(CSRF_FIELD, ""), token):
            raise PageError(403, "This form has expired or did not come from the admin pages. Reload and try again.")
        return view(**kwargs)

    return guarded


def _cookie(value: str, max_age: int) -> str:
    secure = gateway().settings.cookie_secure
    return dump_cookie(ADMIN_COOKIE, value, max_age=max_age, path=ADMIN_PATH, secure=secure, httponly=True,
                       samesite="Lax")


def _token_fingerprint() -> str:
    """Of this tenant's admin token (a changed token ends its sessions) and the tenant itself."""
    return hmac.new(secret().encode(), f"{tenant()}:{admin_key()}".encode(), hashlib.sha256).hexdigest()[:32]


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret(), salt=ADMIN_SALT)
