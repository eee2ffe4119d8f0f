"""Prometheus metrics of the gateway: requests by method, route template and status; latency by route.

With several gunicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set (by server.py) before
prometheus_client is imported, and /metrics adds up every worker's files.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"  # one label for every unknown URL, so scanners can't blow up the label set
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cartwheel_gateway_http_requests",
            "HTTP requests answered by the gateway.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cartwheel_gateway_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            registry=self.registry,
            buckets=BUCKETS,
        )

    def install(self, app: Flask) -> None:
        app.before_request(_start_clock)
        app.after_request(self._observe)

    def _observe(self, response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else UNMATCHED
        method = request.method if request.method in METHODS else "OTHER"
        self.requests.labels(method, route, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            self.latency.labels(route).observe(time.perf_counter() - started)
        return response

    def render(self) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)


def _start_clock() -> None:
    g.started = time.perf_counter()
