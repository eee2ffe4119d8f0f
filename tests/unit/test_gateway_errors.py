"""Every way a request can go wrong gets the one error shape and the right status."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel import subjects
from cartwheel.contracts.catalog import CreateProduct, GetProduct, ListProducts, UpdateProduct
from cartwheel.errors import DomainError, NotFound, ServiceUnavailable
from cartwheel.settings import Settings
from services.gateway.app import MAX_JSON_BODY, create_app
from services.gateway.testing import FakeBus
from tests.helpers import random_sku

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def product_data(**fields: Any) -> dict[str, Any]:
    return {
        "id": "2f1c5c36-5b4e-4b8e-9a8f-1d2c3b4a5f60",
        "sku": random_sku(),
        "name": "Mug",
        "description": "",
        "price_cents": 1200,
        "currency": "EUR",
        "active": True,
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        **fields,
    }


def raising(error: Exception) -> Any:
    def handler(message: Any) -> None:
        raise error

    return handler


def draft(**fields: Any) -> dict[str, Any]:
    return {"sku": random_sku(), "name": "Mug", "price_cents": 1200, "currency": "EUR", **fields}


@pytest.fixture
def bus() -> FakeBus:
    def create(message: CreateProduct) -> dict[str, Any]:
        return product_data(**message.draft.model_dump(exclude={"stock"}))

    return FakeBus({CreateProduct: create, ListProducts: lambda m: {"items": [], "next_cursor": None}})


@pytest.fixture
def client(bus: FakeBus) -> FlaskClient:
    settings = Settings(admin_token=TOKEN, secret="s" * 32)
    return create_app(settings, bus).test_client()


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    return body["error"]


def post(client: FlaskClient, body: Any = None, *, raw: bytes | None = None, **kwargs: Any) -> Any:
    kwargs.setdefault("headers", ADMIN)
    if raw is not None:
        kwargs.setdefault("content_type", "application/json")
        return client.post("/api/admin/products", data=raw, **kwargs)
    return client.post("/api/admin/products", json=body, **kwargs)


@pytest.mark.parametrize("raw", [b"{", b"{'sku': 1}", b"", b"\xff\xfe", b'{"price_cents": NaN}', b"[" * 100_000])
def test_malformed_json_is_400(client: FlaskClient, raw: bytes) -> None:
    error = error_of(post(client, raw=raw), 400)
    assert error["code"] == "bad_request"


@pytest.mark.parametrize("body", [[draft()], "sku", 42, None])
def test_a_body_that_is_not_an_object_is_400(client: FlaskClient, body: Any) -> None:
    assert error_of(post(client, raw=json.dumps(body).encode()), 400)["code"] == "bad_request"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price_cents", 12.5),
        ("price_cents", 12.0),
        ("price_cents", "1200"),
        ("price_cents", True),
        ("name", 123),
        ("active", "yes"),
        ("sku", ["a"]),
    ],
)
def test_wrong_types_are_400_with_the_field(client: FlaskClient, field: str, value: Any) -> None:
    error = error_of(post(client, draft(**{field: value})), 400)
    assert error["code"] == "bad_request"
    assert [f["field"] for f in error["fields"]] == [field]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"price_cents": -1}, "price_cents"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "XXX"}, "currency"),
        ({"name": "   "}, "name"),
        ({"sku": "x" * 65}, "sku"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_values_are_422_with_fields(client: FlaskClient, changes: dict[str, Any], field: str) -> None:
    error = error_of(post(client, draft(**changes)), 422)
    assert error["code"] == "validation_failed"
    assert field in [f["field"] for f in error["fields"]]
    assert all(f["message"] for f in error["fields"])


def test_missing_fields_are_422(client: FlaskClient) -> None:
    error = error_of(post(client, {}), 422)
    assert {f["field"] for f in error["fields"]} == {"sku", "name", "price_cents"}  # currency: the shop's


def test_sql_looking_sku_is_refused_by_the_pattern(client: FlaskClient, bus: FakeBus) -> None:
    error = error_of(post(client, draft(sku="x'; DROP TABLE products;--")), 422)
    assert [f["field"] for f in error["fields"]] == ["sku"]
    assert bus.sent == []


def test_sql_looking_strings_are_plain_strings(client: FlaskClient, bus: FakeBus) -> None:
    name = "Robert'); DROP TABLE products;--"
    response = post(client, draft(name=name, description="1 OR 1=1"))
    assert response.status_code == 201
    assert response.get_json()["name"] == name
    assert bus.sent[-1].draft.name == name
    assert client.get("/api/products", query_string={"q": "' OR '1'='1"}).status_code == 200
    assert bus.sent[-1].q == "' OR '1'='1"


def test_a_10_mb_body_gets_413_without_being_read(client: FlaskClient, bus: FakeBus) -> None:
    class Unread(io.RawIOBase):
        read_bytes = 0

        def readinto(self, buffer: Any) -> int:
            self.read_bytes += len(buffer)
            buffer[: len(buffer)] = b"x" * len(buffer)
            return len(buffer)

    stream = Unread()
    response = client.post(
        "/api/admin/products",
        headers=ADMIN,
        content_type="application/json",
        environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": str(10 * 1024 * 1024)},
    )
    assert error_of(response, 413)["code"] == "payload_too_large"
    assert stream.read_bytes == 0
    assert bus.sent == []


def test_a_chunked_body_over_the_limit_is_413(client: FlaskClient) -> None:
    body = io.BytesIO(b'{"name": "' + b"x" * (2 * MAX_JSON_BODY) + b'"}')
    response = client.post(
        "/api/admin/products",
        headers=ADMIN,
        content_type="application/json",
        environ_overrides={"wsgi.input": body, "wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
    )
    assert error_of(response, 413)["code"] == "payload_too_large"
    assert body.tell() <= MAX_JSON_BODY + 64 * 1024


def test_a_chunked_body_under_the_limit_is_read(client: FlaskClient) -> None:
    body = io.BytesIO(json.dumps(draft()).encode())
    response = client.post(
        "/api/admin/products",
        headers=ADMIN,
        content_type="application/json",
        environ_overrides={"wsgi.input": body, "wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
    )
    assert response.status_code == 201


def test_a_body_over_the_limit_is_413(client: FlaskClient) -> None:
    body = b'{"name": "' + b"x" * MAX_JSON_BODY + b'"}'
    assert error_of(post(client, raw=body), 413)["code"] == "payload_too_large"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(client: FlaskClient, content_type: str | None) -> None:
    response = client.post("/api/admin/products", data=b'{"sku": "a"}', headers=ADMIN, content_type=content_type)
    assert error_of(response, 415)["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_json(client: FlaskClient) -> None:
    body = json.dumps(draft()).encode()
    assert post(client, raw=body, content_type="application/json; charset=utf-8").status_code == 201


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"bearer {TOKEN}x"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer "},
    ],
)
def test_admin_routes_need_the_token(client: FlaskClient, bus: FakeBus, headers: dict[str, str]) -> None:
    response = post(client, draft(), headers=headers)
    assert error_of(response, 401)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert bus.sent == []


# PostgreSQL can neither store nor compare text holding a NUL: each of these reached a service and was a 500 there.
def test_a_nul_character_in_a_body_or_a_query_is_422_and_reaches_no_service(client: FlaskClient, bus: FakeBus) -> None:
    nul = {"field": "categories.1", "message": "must not contain a NUL character"}
    assert error_of(post(client, draft(categories=["mugs", "a\u0000"])), 422)["fields"] == [nul]
    assert error_of(post(client, draft(name="Mug\u0000")), 422)["fields"][0]["field"] == "name"
    assert error_of(client.get("/api/products?q=mug%00"), 422)["fields"][0]["field"] == "q"
    assert bus.sent == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/products/a%00b"),
        ("GET", "/api/products/%00/image"),
        ("PATCH", "/api/admin/products/%00"),
        ("GET", "/api/admin/inventory/%00"),
    ],
)
def test_a_path_id_with_a_nul_character_is_404_and_reaches_no_service(
    client: FlaskClient, bus: FakeBus, method: str, path: str
) -> None:
    response = client.open(path, method=method, json={"name": "Mug"}, headers=ADMIN)
    assert error_of(response, 404)["code"] == "not_found"
    assert bus.sent == [] and bus.kv_reads == []


def test_no_admin_token_configured_refuses_everyone(bus: FakeBus) -> None:
    client = create_app(Settings(admin_token=None, secret="s" * 32), bus).test_client()
    assert error_of(post(client, draft(), headers={"Authorization": "Bearer "}), 401)["code"] == "unauthorized"


def test_unknown_id_is_404(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[GetProduct] = raising(NotFound("no such product"))
    assert error_of(client.get("/api/products/no-such-sku"), 404)["code"] == "not_found"


def test_duplicate_sku_is_409(client: FlaskClient, bus: FakeBus) -> None:
    def refuse(message: CreateProduct) -> None:
        raise DomainError("sku taken", code="duplicate_sku", sku=message.draft.sku)

    bus.handlers[CreateProduct] = refuse
    body = draft()
    error = error_of(post(client, body), 409)
    assert error == {"code": "duplicate_sku", "message": "sku taken", "sku": body["sku"]}


def test_a_service_timeout_is_503_with_retry_after(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[ListProducts] = raising(ServiceUnavailable(subjects.CATALOG_PRODUCTS_LIST, "no answer within 5 s"))
    response = client.get("/api/products")
    assert error_of(response, 503)["code"] == "service_unavailable"
    assert int(response.headers["Retry-After"]) > 0


def test_nats_down_is_503(client: FlaskClient, bus: FakeBus) -> None:
    bus.connected = False
    response = client.get("/api/products/some-sku")
    assert error_of(response, 503)["code"] == "service_unavailable"
    assert "Retry-After" in response.headers


def test_unknown_route_is_404_json(client: FlaskClient) -> None:
    assert error_of(client.get("/api/nothing-here"), 404)["code"] == "not_found"
    assert error_of(client.post("/nope", json={}), 404)["code"] == "not_found"


def test_wrong_method_is_405_json(client: FlaskClient) -> None:
    response = client.delete("/api/products")
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_unknown_query_parameters_are_400(client: FlaskClient) -> None:
    error = error_of(client.get("/api/products?colour=blue"), 400)
    assert error["fields"] == [{"field": "colour", "message": "unknown query parameter"}]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=0", 422),
        ("limit=101", 422),
        ("limit=ten", 400),
        ("limit=2.5", 400),
        ("limit=1&limit=2", 400),
        ("include_inactive=maybe", 400),
        ("q=" + "x" * 201, 422),
    ],
)
def test_query_values_are_validated(client: FlaskClient, query: str, status: int) -> None:
    error_of(client.get(f"/api/products?{query}"), status)


def test_an_empty_patch_is_422(client: FlaskClient) -> None:
    response = client.patch("/api/admin/products/some-id", json={}, headers=ADMIN)
    assert error_of(response, 422)["fields"][0]["field"] is None


def test_a_null_in_a_patch_is_422(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[UpdateProduct] = lambda m: product_data()
    response = client.patch("/api/admin/products/some-id", json={"price_cents": None}, headers=ADMIN)
    assert error_of(response, 422)["code"] == "validation_failed"


def test_an_unexpected_error_is_a_json_500_without_details(
    client: FlaskClient, bus: FakeBus, caplog: pytest.LogCaptureFixture
) -> None:
    bus.handlers[ListProducts] = raising(RuntimeError("secret internals at /srv/app.py line 12"))
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/products", headers=ADMIN)
    error = error_of(response, 500)
    assert error["code"] == "internal_error"
    assert "secret" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret internals" in str(logged[0].exc_info[1])
    assert TOKEN not in caplog.text


def test_a_service_internal_error_is_a_500_without_its_message(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[ListProducts] = raising(DomainError("db on fire", code="internal_error"))
    response = client.get("/api/products")
    assert error_of(response, 500)["code"] == "internal_error"
    assert "fire" not in response.get_data(as_text=True)


@pytest.mark.parametrize(("code", "status"), [("service_unavailable", 503), ("rate_limited", 429)])
def test_a_service_saying_try_later_gets_retry_after(client: FlaskClient, bus: FakeBus, code: str, status: int) -> None:
    bus.handlers[ListProducts] = raising(DomainError("busy", code=code))
    response = client.get("/api/products")
    assert error_of(response, status)["code"] == code
    assert int(response.headers["Retry-After"]) > 0
