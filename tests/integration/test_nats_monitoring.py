"""The embedded nats-server's monitoring port: on loopback, where prometheus-nats-exporter would read it."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest

from cartwheel.natsserver import NatsServer, PortInUse, free_port
from tests.helpers import random_sku
from tests.unit.test_observability_deploy import EXPORTER_ROUTEZ, EXPORTER_VARZ, expressions, metric_names


def read(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


def exporter_names(endpoint: str, document: dict[str, Any], prefix: str = "") -> set[str]:
    """The gauges prometheus-nats-exporter makes of an endpoint's JSON: gnatsd_<endpoint>_<key path>, numbers only
    (collector/collector.go, objectToMetrics)."""
    names = set()
    for key, value in document.items():
        path = f"{prefix}_{key}" if prefix else key
        if isinstance(value, dict):
            names |= exporter_names(endpoint, value, path)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            names.add(f"gnatsd_{endpoint}_{path}".replace("/", "_").replace("__", "_"))
    return names


def test_the_embedded_server_serves_varz_and_jsz_on_loopback(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", free_port())
    stream, subject = random_sku("MON").replace("-", "_"), random_sku("mon")

    async def publish() -> None:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[subject])
            await js.publish(subject, b"hello")
        finally:
            await nc.close()

    assert server.monitor_url == f"http://127.0.0.1:{server.monitor_port}"
    with server:
        asyncio.run(publish())
        varz = read(f"{server.monitor_url}/varz")
        assert varz["http_host"] == "127.0.0.1" and varz["http_port"] == server.monitor_port
        assert varz["port"] == server.port and "jetstream" in varz
        jsz = read(f"{server.monitor_url}/jsz?streams=true")
        assert jsz["streams"] >= 1 and jsz["messages"] >= 1
        (account,) = [a for a in jsz["account_details"] if any(s["name"] == stream for s in a["stream_detail"])]
        (detail,) = [s for s in account["stream_detail"] if s["name"] == stream]
        assert detail["state"]["messages"] == 1
        assert read(f"{server.monitor_url}/healthz") == {"status": "ok"}


def test_the_monitoring_port_is_kept_across_restarts_and_refused_when_taken(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", free_port())
    port = server.monitor_port
    with server:
        assert read(f"{server.monitor_url}/varz")["http_port"] == port
    with server:
        assert read(f"{server.monitor_url}/varz")["http_port"] == port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = NatsServer(tmp_path / "other", free_port(), monitor_port=sock.getsockname()[1])
        with pytest.raises(PortInUse):
            taken.start()


def test_the_exporter_names_the_dashboard_and_alerts_use_exist_in_this_server(tmp_path: Path) -> None:
    """deploy/observability names gnatsd_varz_* and gnatsd_routez_* series: the exporter makes them from the keys of
    /varz and /routez, which this nats-server version has; and the list the unit test checks against is true."""
    with NatsServer(tmp_path / "nats", free_port()) as server:
        made = exporter_names("varz", read(f"{server.monitor_url}/varz"))
        made |= exporter_names("routez", read(f"{server.monitor_url}/routez"))
    listed = EXPORTER_VARZ | EXPORTER_ROUTEZ
    assert made >= listed, sorted(listed - made)
    used = {n for expr in expressions().values() for n in metric_names(expr) if n.startswith(("gnatsd_varz_",
                                                                                                "gnatsd_routez_"))}
    assert used and used <= made, sorted(used - made)
