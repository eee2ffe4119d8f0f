"""The trace-context helpers: what goes into NATS headers and comes out of them, with spans off and on."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cartwheel import observability, tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spans.jsonl"
    tracing.configure_tracing("unit", f"file:{path}")
    try:
        yield path
    finally:
        tracing.disable_tracing()


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_headers_without_a_traceparent_carry_no_context() -> None:
    assert tracing.extract(None) is None
    assert tracing.extract({}) is None
    assert tracing.extract({"Nats-Msg-Id": "x"}) is None
    assert tracing.extract({"traceparent": "not-a-traceparent"}) is None
    assert tracing.extract({"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"}) is None  # all-zero id: invalid


def test_without_a_trace_nothing_is_injected_and_logs_say_dash() -> None:
    assert tracing.inject() is None
    assert tracing.inject({"a": "b"}) == {"a": "b"}
    assert tracing.current_traceparent() is None
    assert tracing.trace_id() == "-"


def test_off_a_received_context_is_passed_on_as_it_came() -> None:
    assert not tracing.enabled
    with tracing.span("orders.checkout", parent=tracing.extract({"traceparent": PARENT})):
        assert tracing.trace_id() == TRACE
        assert tracing.inject({"Nats-Msg-Id": "m"}) == {"Nats-Msg-Id": "m", "traceparent": PARENT}
        assert tracing.current_traceparent() == PARENT
    assert tracing.trace_id() == "-"


def test_off_the_gateway_begins_a_fresh_unsampled_trace_or_continues_the_clients() -> None:
    made, token = tracing.begin("GET /api/cart", parent=None)
    try:
        first = tracing.trace_id()
        assert len(first) == 32 and first != "-"
        assert tracing.current_traceparent().endswith("-00")  # not sampled: nobody records it
    finally:
        tracing.end(made, token)
    made, token = tracing.begin("GET /api/cart", parent=tracing.extract({"traceparent": PARENT}))
    try:
        assert tracing.trace_id() == TRACE
    finally:
        tracing.end(made, token)
    assert tracing.trace_id() == "-"


def test_on_each_hop_is_a_child_span_and_passes_on_its_own_span_id(spans: Path) -> None:
    with tracing.span("orders.checkout", parent=tracing.extract({"traceparent": PARENT}), kind=tracing.SERVER):
        sent = tracing.inject()
        assert sent is not None
        with tracing.span("inventory.reserve", parent=tracing.extract(sent), kind=tracing.CONSUMER):
            pass
    by_name = {span["name"]: span for span in read(spans)}
    outer, inner = by_name["orders.checkout"], by_name["inventory.reserve"]
    assert {outer["context"]["trace_id"], inner["context"]["trace_id"]} == {f"0x{TRACE}"}
    assert outer["parent_id"] == "0x00f067aa0ba902b7"
    assert inner["parent_id"] == outer["context"]["span_id"]
    assert sent["traceparent"] == f"00-{TRACE}-{outer['context']['span_id'][2:]}-01"


def test_on_a_batch_span_is_the_first_commands_child_and_links_the_others(spans: Path) -> None:
    other = f"00-{'a' * 32}-{'b' * 16}-01"
    with tracing.span("inventory apply", parent=tracing.context_of(PARENT),
                      links=tracing.links_of([other, None, "junk"])):
        pass
    (batch,) = read(spans)
    assert batch["context"]["trace_id"] == f"0x{TRACE}"
    assert [link["context"]["trace_id"] for link in batch["links"]] == [f"0x{'a' * 32}"]


def test_log_lines_carry_the_trace_and_the_ids_in_hand(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    observability.configure_logging("unit", fmt="json")
    try:
        order = observability.order_id.set("ord-1")
        with tracing.span("x", parent=tracing.context_of(PARENT)):
            logging.getLogger("cartwheel.unit").info("placed")
        observability.order_id.reset(order)
        logging.getLogger("cartwheel.unit").info("idle")
    finally:
        root.handlers[:], root.level = handlers, level
    placed, idle = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert placed["trace_id"] == TRACE and placed["order_id"] == "ord-1"
    assert idle["trace_id"] == "-" and "order_id" not in idle


def test_the_text_format_names_the_trace() -> None:
    record = logging.LogRecord("cartwheel.unit", logging.INFO, __file__, 1, "hello", None, None)
    context = observability._ContextFilter("unit")
    with tracing.span("x", parent=tracing.context_of(PARENT)):
        token = observability.cart_id.set("cart-9")
        context.filter(record)
        observability.cart_id.reset(token)
    line = logging.Formatter(observability.TEXT_FORMAT).format(record)
    assert f"trace={TRACE} cart=cart-9]" in line
