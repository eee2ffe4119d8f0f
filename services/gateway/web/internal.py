"""The pages call the JSON API in this process: the API's own routes, validation and errors, no socket.

A shopper's page forwards the shopper's cookies; an admin page sends the admin token instead, which
never leaves the server (the browser holds only the signed admin cookie).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import current_app, request
from werkzeug.datastructures import Headers
from werkzeug.test import Client, EnvironBuilder

from services.gateway.auth import AS_ADMIN
from services.gateway.context import tenant

API_WSGI = "cartwheel.api_wsgi"
FORWARDED = ("Cookie", "X-Forwarded-For", "User-Agent")


class PageError(Exception):
    """A page that cannot be shown: rendered as the error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Answer:
    status: int
    data: Any
    headers: Headers

    @classmethod
    def refusal(cls, field: str, message: str) -> Answer:
        """A refusal made by the page itself, shaped like the API's 422."""
        error = {"code": "validation_failed", "message": message, "fields": [{"field": field, "message": message}]}
        return cls(422, {"error": error}, Headers())

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> dict[str, Any]:
        error = self.data.get("error") if isinstance(self.data, dict) else None
        return error if isinstance(error, dict) else {}

    @property
    def code(self) -> str | None:
        return self.error.get("code")

    @property
    def message(self) -> str:
        return str(self.error.get("message") or f"the shop answered {self.status}")

    def field_errors(self) -> dict[str, str]:
        """The API's per-field problems (400 and 422), by field name; problems of the body as a whole under ``""``."""
        problems: dict[str, str] = {}
        for problem in self.error.get("fields") or []:
            name = str(problem.get("field") or "").removeprefix("body.")
            problems.setdefault(name, str(problem.get("message", "")))
        return problems

    def or_raise(self) -> Any:
        """The data of a successful answer; otherwise the error page with the API's status and message."""
        if not self.ok:
            raise PageError(self.status if self.status < 500 else 503, self.message)
        return self.data


def call(
    method: str,
    path: str,
    *,
    json: Any = None,
    query: dict[str, Any] | None = None,
    body: bytes | None = None,
    content_type: str | None = None,
    admin: bool = False,
) -> Answer:
    """Answer ``method path`` as the API would answer this page's visitor (or the admin, with ``admin``)."""
    headers = Headers()
    for name in FORWARDED:
        if name in request.headers and not (admin and name == "Cookie"):
            headers[name] = request.headers[name]
    wanted = {k: v for k, v in (query or {}).items() if v not in (None, "")}
    builder = EnvironBuilder(
        path=_quoted(path),
        method=method,
        query_string=wanted,
        headers=headers,
        json=json,
        data=body,
        content_type=content_type,
        environ_base={"REMOTE_ADDR": request.remote_addr or "127.0.0.1", **({AS_ADMIN: tenant()} if admin else {})},
    )
    response = Client(current_app.extensions[API_WSGI], use_cookies=False).open(builder)
    data = response.get_json(silent=True) if response.mimetype == "application/json" else None
    return Answer(response.status_code, data, response.headers)


def _quoted(path: str) -> str:
    """Each segment percent-encoded: an id taken from a page URL stays one segment ("?" and "#" included)."""
    return "/".join(quote(segment, safe="@:!$&'()*+,;=-._~") for segment in path.split("/"))
