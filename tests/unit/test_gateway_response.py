"""The gateway's gunicorn response sends a whole small answer in one send, and streams as before."""

from __future__ import annotations

from typing import Any

import pytest
from gunicorn.http import wsgi

from services.gateway.server import one_send_response

Response = one_send_response(wsgi.Response)


class Socket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


class Request:
    def __init__(self, method: str = "POST", version: tuple[int, int] = (1, 1)) -> None:
        self.method = method
        self.version = version

    def should_close(self) -> bool:
        return False


class Config:
    is_ssl = False
    sendfile = False

    def __getattr__(self, name: str) -> Any:
        return None


def answer(method: str, status: str, headers: list[tuple[str, str]], body: list[bytes]) -> list[bytes]:
    sock = Socket()
    resp = Response(Request(method), sock, Config())
    resp.start_response(status, headers)
    for chunk in body:
        resp.write(chunk)
    resp.close()
    return sock.sends


def test_a_json_answer_goes_out_in_one_send() -> None:
    body = b'{"error":"out_of_stock"}'
    sends = answer("POST", "409 CONFLICT", [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(body)))], [body])
    assert len(sends) == 1
    head, _, sent_body = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 409 CONFLICT\r\n") and b"Content-Length: 24" in head
    assert sent_body == body


def test_a_streamed_answer_sends_its_head_first_and_each_chunk_as_it_comes() -> None:
    sends = answer("GET", "200 OK", [("Content-Type", "text/event-stream")], [b"data: 1\n\n", b"data: 2\n\n"])
    assert sends[0].endswith(b"\r\n\r\n") and b"Transfer-Encoding: chunked" in sends[0]
    assert b"data: 1" in b"".join(sends[1:3]) and sends[-1] == b"0\r\n\r\n"


@pytest.mark.parametrize(("method", "status", "body"), [
    ("HEAD", "200 OK", [b"ignored"]),  # a head-only answer drops the body, still sends the head
    ("GET", "204 NO CONTENT", []),  # no body at all
    ("GET", "200 OK", [b""]),  # an empty first chunk
])
def test_an_answer_without_body_bytes_still_sends_its_head(method: str, status: str, body: list[bytes]) -> None:
    length = [("Content-Length", "7")] if method == "HEAD" else []
    sends = answer(method, status, length, body)
    assert b"".join(sends).startswith(b"HTTP/1.1 " + status.encode())
    assert b"".join(sends).endswith(b"\r\n\r\n")


def test_a_body_past_its_content_length_does_not_hold_the_head_back() -> None:
    sends = answer("GET", "200 OK", [("Content-Length", "0")], [b"too much"])
    assert len(sends) == 1 and sends[0].endswith(b"\r\n\r\n") and b"too much" not in sends[0]
