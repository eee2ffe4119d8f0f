"""The real server: gunicorn with gevent workers in a subprocess, against a real nats-server and a fake catalog."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from cartwheel import natsserver
from services.gateway.fake_catalog import FakeCatalog
from tests.helpers import random_sku

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t" * 24


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=15, **kwargs)  # type: ignore[arg-type]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_gateway(nats_url: str, tmp_path: Path, workers: int, **settings: str) -> Gateway:
    port = natsserver.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTWHEEL_", "PROMETHEUS_"))}
    env.update(
        CARTWHEEL_NATS_URL=nats_url,
        CARTWHEEL_GATEWAY_PORT=str(port),
        CARTWHEEL_GATEWAY_WORKERS=str(workers),
        CARTWHEEL_VAR_DIR=str(tmp_path / "var"),
        CARTWHEEL_ADMIN_TOKEN=TOKEN,
        CARTWHEEL_SECRET="s" * 32,
        CARTWHEEL_REQUEST_TIMEOUT="20",
        **{f"CARTWHEEL_{name.upper()}": value for name, value in settings.items()},
    )
    log = tmp_path / f"gateway-{port}.log"
    with log.open("wb") as out:
        process = natsserver.spawn([sys.executable, "-m", "services.gateway"], output=out, env=env, cwd=ROOT)
    gateway = Gateway(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the gateway exited with {process.returncode}:\n{gateway.output()}"
        try:
            if gateway.get("/readyz").status_code == 200:
                return gateway
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    natsserver.terminate(process)
    raise AssertionError(f"the gateway was not ready within 30 s:\n{gateway.output()}")


PER_ADDRESS = 40


@pytest.fixture(scope="module")
def catalog(nats_url: str) -> Iterator[FakeCatalog]:
    catalog = FakeCatalog(nats_url).start()
    yield catalog
    catalog.stop()


@pytest.fixture(scope="module")
def gateway(nats_url: str, catalog: FakeCatalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One worker, so every request below is served by the same process as the slow one."""
    gateway = start_gateway(nats_url, tmp_path_factory.mktemp("gateway"), workers=1, request_body_seconds="2",
                            gateway_max_requests_per_address=str(PER_ADDRESS), trusted_proxies="1")
    yield gateway
    natsserver.terminate(gateway.process)


def test_the_nats_loop_runs_as_a_greenlet(gateway: Gateway) -> None:
    body = gateway.get("/readyz").json()
    assert body["worker"]["loop"] == "greenlet"
    assert body["services"]["catalog"]["status"] == "ok"
    assert "MonkeyPatchWarning" not in gateway.output()


def test_concurrent_requests_share_the_connection(gateway: Gateway, catalog: FakeCatalog) -> None:
    products = [catalog.add() for _ in range(10)]

    def fetch(i: int) -> tuple[int, str]:
        product = products[i % len(products)]
        response = gateway.get(f"/api/products/{product.sku}")
        return response.status_code, response.json().get("id", "")

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(fetch, range(200)))
    assert results == [(200, products[i % len(products)].id) for i in range(200)]


def test_a_slow_reply_does_not_block_other_requests(gateway: Gateway, catalog: FakeCatalog) -> None:
    slow, fast = catalog.add(), catalog.add()
    arrived = catalog.hold(slow.sku)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(gateway.get, f"/api/products/{slow.sku}")
        try:
            assert arrived.wait(15), "the slow request never reached the catalog"
            # The slow reply is held until these are answered: they can only pass if the worker isn't blocked.
            for _ in range(20):
                assert gateway.get(f"/api/products/{fast.sku}").status_code == 200
                assert gateway.get("/healthz").status_code == 200
            assert not pending.done()
        finally:
            catalog.release(slow.sku)
        assert pending.result().status_code == 200


def test_admin_create_over_http(gateway: Gateway) -> None:
    draft = {"sku": random_sku(), "name": "Kettle", "price_cents": 4000, "currency": "EUR"}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    created = requests.post(f"{gateway.url}/api/admin/products", json=draft, headers=headers, timeout=15)
    assert created.status_code == 201
    assert gateway.get(created.headers["Location"]).json()["sku"] == draft["sku"]
    assert TOKEN not in gateway.output()


def ask_with_a_big_body(gateway: Gateway, framing: bytes, body: bytes) -> bytes:
    """Send headers and as much of ``body`` as the server takes; the head of its answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        head = f"POST /api/admin/products HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        sock.sendall(head.encode() + b"Content-Type: application/json\r\n" + framing + b"\r\n")
        with contextlib.suppress(OSError):  # the server may stop reading and close: it has answered by then
            sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


def test_a_10_mb_body_is_refused_without_reading_it(gateway: Gateway) -> None:
    answer = ask_with_a_big_body(gateway, f"Content-Length: {10 * 1024 * 1024}\r\n".encode(), b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_chunked_body_over_the_limit_is_refused(gateway: Gateway) -> None:
    chunk = b"x" * 65536
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 40  # 2.5 MiB, no Content-Length
    answer = ask_with_a_big_body(gateway, b"Transfer-Encoding: chunked\r\n", body)
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_client_that_sends_all_of_an_11_mb_body_before_reading_gets_the_413(gateway: Gateway) -> None:
    """Issue 13, finding 10: the gateway read 1 MB after its 413 and closed, so a client still sending (as
    urllib and curl do, reading only when done) saw a broken pipe instead of the answer."""
    asked = urllib.request.Request(f"{gateway.url}/api/admin/products", data=b"x" * (11 * 1024 * 1024), method="POST",
                                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(asked, timeout=30)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["error"]["code"] == "payload_too_large"


def test_slow_bodies_from_one_address_neither_hold_the_gateway_nor_last(gateway: Gateway) -> None:
    """Issue 13, finding 2: connections that send headers and one byte of a body held a greenlet each for as
    long as they liked (no body deadline), and 2,000 of them stopped a one-worker gateway answering /healthz.
    Now requests in flight from one address are capped (the rest get 429 at once) and a body has a deadline
    (408, here 2 s)."""
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (b"POST /api/cart/items HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    socks = []
    try:
        for _ in range(PER_ADDRESS + 5):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(head)
            socks.append(sock)
        started = time.monotonic()
        assert gateway.get("/healthz").status_code == 200  # another address is served meanwhile
        statuses = sorted(_status_line(sock) for sock in socks)
        assert statuses == [b"HTTP/1.1 408"] * PER_ADDRESS + [b"HTTP/1.1 429"] * 5
        for sock in socks:  # their bodies are unread: no next request on these connections
            _read_until_closed(sock)
        assert time.monotonic() - started < 8  # the deadline, not the client, ended them
    finally:
        for sock in socks:
            sock.close()


def _read_until_closed(sock: socket.socket) -> None:
    """Returns once the server closed the connection; socket.timeout (a failure) if it kept it open 5 s."""
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(4096):
            pass


def _status_line(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n" not in answer and (chunk := sock.recv(4096)):
        answer += chunk
    return answer.split(b"\r\n", 1)[0][:12]


def test_errors_are_json_on_the_real_server(gateway: Gateway) -> None:
    missing = gateway.get("/no/such/page")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = requests.put(f"{gateway.url}/api/products", timeout=15)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_two_workers_add_up_their_metrics_and_stop_on_ctrl_c(
    nats_url: str, catalog: FakeCatalog, tmp_path: Path
) -> None:
    metrics_port = natsserver.free_port()
    gateway = start_gateway(nats_url, tmp_path, workers=2, metrics_port=str(metrics_port))
    try:
        pids, ready = set(), 0
        for _ in range(2000):  # until both workers are connected and have answered
            response = gateway.get("/readyz")
            if response.status_code == 200:
                pids.add(response.json()["worker"]["pid"])
                ready += 1
            if len(pids) == 2:
                break
        assert len(pids) == 2
        assert gateway.get("/metrics").status_code == 401  # issue 13, finding 9: not for strangers on the public port
        assert gateway.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=15).text  # the master's port
        line = next(
            line
            for line in metrics.splitlines()
            if line.startswith('cartwheel_gateway_http_requests_total{method="GET",route="/readyz",status="200"}')
        )
        assert float(line.rsplit(" ", 1)[1]) >= ready  # both workers' counts
        gateway.process.send_signal(signal.SIGINT)
        assert gateway.process.wait(timeout=10) == 0
        # Each worker's exit printed "Exception ignored in: <function _removeHandlerRef ...>" and a TypeError
        # traceback per log handler (gevent issue 2148): a stop prints no traceback.
        assert "Traceback" not in gateway.output() and "Exception ignored" not in gateway.output(), gateway.output()
    finally:
        natsserver.terminate(gateway.process)
