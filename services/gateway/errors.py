"""Every error leaves the gateway as ``{"error": {"code", "message", ...details}}`` with a fitting status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from cartwheel.db import unavailable
from cartwheel.errors import DomainError, ServiceUnavailable, status_for

log = logging.getLogger("cartwheel.gateway")

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""What a browser may do with an API response it renders (JSON, an image, an event stream, an error): nothing."""
RETRY_AFTER_SECONDS = 1

# Codes of the HTTP errors Flask/Werkzeug raise themselves.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error the gateway itself decides on (bad input, missing token, ...)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.details = details


def invalid_value(field: str, problem: str) -> ApiError:
    """The 422 of one value a client sent, in the shape validation gives."""
    fields = [{"field": field, "message": problem}]
    return ApiError(422, "validation_failed", "some values are not acceptable", fields=fields)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> Response:
    extra = {k: v for k, v in (details or {}).items() if k not in ("code", "message")}
    body = json.dumps({"error": {"code": code, "message": message, **extra}}, sort_keys=False, separators=(",", ":"))
    return Response(body, status=status, headers=headers, mimetype="application/json")


def install_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(DomainError, _domain_error)
    app.register_error_handler(ServiceUnavailable, _unavailable)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _api_error(error: ApiError) -> Response:
    return error_response(error.status, error.code, error.message, headers=error.headers, details=error.details)


def _domain_error(error: DomainError) -> Response:
    status = status_for(error.code)
    if status in (429, 503):
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return error_response(status, error.code, error.message, headers=retry, details=error.details)
    if status >= 500:
        log.error("gateway service error %s %s: %s %s", request.method, request.path, error.code, error.message)
        return error_response(500, "internal_error", "the request failed inside the shop; it has been logged")
    return error_response(status, error.code, error.message, details=error.details)


def _unavailable(error: ServiceUnavailable) -> Response:
    log.warning("gateway service unavailable %s %s: %s", request.method, request.path, error)
    return error_response(
        503,
        "service_unavailable",
        "a service did not answer in time; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = HTTP_CODES.get(status) or (error.name or "error").lower().replace(" ", "_")
    message = (
        {
            404: f"no route {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "the request body is too large",
        }.get(status)
        or error.description
        or code
    )
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return error_response(status, code, message, headers=headers)


def _unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):  # raised past Flask's own dispatch (e.g. from a hook)
        return _http_error(error)
    if unavailable(error):  # the gateway's own database (accounts, sessions) is down or restarting
        log.warning("gateway database unavailable %s %s: %s", request.method, request.path,
                    str(error).splitlines()[0][:200])
        return error_response(503, "service_unavailable", "the shop's database is unavailable; try again shortly",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    log.exception("gateway internal error %s %s", request.method, request.path)
    return error_response(500, "internal_error", "something went wrong on our side; it has been logged")
