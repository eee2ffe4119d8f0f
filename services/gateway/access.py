"""Every HTTP request: a trace (continued from the client's ``traceparent``, else a new one), the trace id and a
request id in the answer (``X-Trace-Id``, ``X-Request-Id``), and one JSON access-log line.

The line never holds the Authorization header, cookies or the query string (a reset link's token travels there).
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Flask, Response, g, request

from cartwheel import tracing
from cartwheel.observability import ACCESS_LOGGER
from services.gateway.guard import client_address
from services.gateway.metrics import UNMATCHED

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a client's own request id, taken only when it is a plain token
log = logging.getLogger(ACCESS_LOGGER)


def install(app: Flask, trusted_proxies: int) -> None:
    def begin() -> None:
        g.began = time.perf_counter()
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if REQUEST_ID.match(given) else secrets.token_hex(8)
        traceparent = request.headers.get(tracing.TRACEPARENT)
        parent = tracing.extract({tracing.TRACEPARENT: traceparent}) if traceparent else None
        route = request.url_rule.rule if request.url_rule else UNMATCHED
        attributes = {"http.request.method": request.method, "http.route": route} if tracing.enabled else None
        g.trace = tracing.begin(f"{request.method} {route}", parent=parent, attributes=attributes)

    def answer(response: Response) -> Response:
        trace_id = response.headers["X-Trace-Id"] = tracing.trace_id()
        response.headers["X-Request-Id"] = g.get("request_id", "-")
        made = g.get("trace")
        if made is not None and made[0].is_recording():
            made[0].set_attribute("http.response.status_code", response.status_code)
        if log.isEnabledFor(logging.INFO):
            began = g.get("began")
            route = request.url_rule.rule if request.url_rule else UNMATCHED
            log.info("%s %s %s", request.method, request.path, response.status_code, extra={"fields": {
                "method": request.method,
                "route": route,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - began) * 1000, 2) if began else None,
                "trace_id": trace_id,
                "request_id": g.get("request_id", "-"),
                "remote_addr": client_address(request.environ, trusted_proxies),
            }})
        return response

    def finish(_error: BaseException | None) -> None:
        made = g.pop("trace", None)
        if made is not None:
            tracing.end(*made)

    app.before_request(begin)
    app.after_request(answer)
    app.teardown_request(finish)
