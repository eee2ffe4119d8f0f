"""One checkout followed through every service by its trace id: a shop of its own with spans written to a file.

The gateway begins the trace at the checkout (its ``X-Trace-Id``); the buyer's payment continues it (``traceparent``)
as a client stitching one checkout together would. Spans of that one trace must come from the gateway and from
every service the checkout touches, over each kind of hop: requests, the inventory lane's commands, outbox events
and their consumers, and the Stripe calls; and the services' log lines must carry the trace id and the order.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cartwheel.natsserver import free_port
from cartwheel.settings import Settings
from cartwheel.supervisor import StartupError, System
from tests.e2e.test_cart_http import product

TIMEOUT = 20


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Path, Path]]:
    """A shop writing every process's spans to one file, logging at DEBUG: (system, spans file, its output)."""
    var_dir = tmp_path_factory.mktemp("traced-shop")
    spans = var_dir / "spans.jsonl"
    settings = Settings(var_dir=var_dir, nats_url=f"nats://127.0.0.1:{free_port()}", embedded_nats=True,
                        gateway_host="127.0.0.1", gateway_port=free_port(), metrics_port=0, gateway_workers=1,
                        log_level="DEBUG", otel_exporter=f"file:{spans}")
    output = var_dir / "system.log"
    with output.open("w", encoding="utf-8") as out:
        shop = System(settings, out=out, colour=False)
        try:
            shop.start()
        except StartupError as exc:
            pytest.fail(f"the traced shop did not start: {exc}\n(output: {output})", pytrace=False)
        try:
            yield shop, spans, output
        finally:
            shop.stop()


def spans_of(path: Path, trace_id: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [s for s in found if s["context"]["trace_id"] == f"0x{trace_id}"]


def where(span: dict[str, Any]) -> tuple[str, str]:
    return span["resource"]["attributes"]["service.name"], span["name"]


def wait_for(check: Any, what: str, seconds: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


def test_one_checkout_is_one_trace_through_every_service(traced: tuple[System, Path, Path]) -> None:
    system, spans_file, output = traced
    mug = product(system, stock=5)
    browser = requests.Session()
    added = browser.post(f"{system.base_url}/api/cart/items", json={"product_id": mug["id"], "quantity": 1},
                         timeout=TIMEOUT)
    assert added.status_code == 200, added.text
    placed = browser.post(f"{system.base_url}/api/checkout", json={}, timeout=TIMEOUT)
    assert placed.status_code == 201, placed.text
    trace_id, order_id = placed.headers["X-Trace-Id"], placed.json()["order_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != added.headers["X-Trace-Id"]
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    paid = browser.post(f"{system.base_url}/api/orders/{order_id}/pay", json={"payment_method": "pm_card_visa"},
                        headers={"traceparent": traceparent}, timeout=TIMEOUT)
    assert paid.status_code == 200, paid.text
    assert paid.headers["X-Trace-Id"] == trace_id  # continued, not begun anew

    # Reached asynchronously: the paid event (outbox of payments → orders → outbox of orders → cart).
    wanted = {
        ("gateway", "POST /api/checkout"), ("gateway", "POST /api/orders/<order_id>/pay"),
        ("orders", "orders.checkout"), ("cart", "cart.get"),
        ("inventory", "inventory apply"),  # the lane's batch that reserved the stock
        ("payments", "stripe: create a payment"), ("payments", "stripe: confirm the payment"),
        ("orders", "orders_succeeded events.payments.succeeded"),  # consumers of outbox events
        ("cart", "cart_checkout events.orders.paid"),
    }
    seen = wait_for(lambda: (got := {where(s) for s in spans_of(spans_file, trace_id)}) >= wanted and got,
                    f"spans of trace {trace_id} missing: {wanted - {where(s) for s in spans_of(spans_file, trace_id)}}")
    assert {service for service, _ in seen} >= {"gateway", "orders", "cart", "inventory", "payments"}
    ours = spans_of(spans_file, trace_id)
    span_ids = {s["context"]["span_id"] for s in ours}
    roots = [s for s in ours if s["parent_id"] not in span_ids]
    assert [where(s) for s in roots if s["parent_id"] is None] == [("gateway", "POST /api/checkout")]

    log = output.read_text(encoding="utf-8", errors="replace")
    access = [json.loads(line[line.index("{"):]) for line in log.splitlines()
              if '"logger":"cartwheel.gateway.access"' in line and trace_id in line]
    assert {(a["method"], a["route"], a["status"]) for a in access} >= {
        ("POST", "/api/checkout", 201), ("POST", "/api/orders/<order_id>/pay", 200)}
    assert all("authorization" not in json.dumps(a).lower() and "cookie" not in json.dumps(a).lower() for a in access)
    line = rf" (\w+) \[[^\]]* trace={trace_id}(?: tenant=\S+)? order={order_id}[\] ]"
    logged = {m.group(1) for m in re.finditer(line, log)}
    assert {"orders", "cart"} <= logged, f"services logging trace {trace_id} with order {order_id}: {logged}"
