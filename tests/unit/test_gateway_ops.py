"""Liveness, readiness, metrics and the OpenAPI document, over a fake bus."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from cartwheel import subjects
from cartwheel.contracts.catalog import ListProducts
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.context import gateway
from services.gateway.openapi import REF_TEMPLATE
from services.gateway.testing import FakeBus


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus({ListProducts: lambda m: {"items": [], "next_cursor": None}})


@pytest.fixture
def app(bus: FakeBus) -> Flask:
    return create_app(Settings(admin_token="t" * 24, secret="s" * 32), bus)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_healthz_is_200_even_without_nats(client: FlaskClient, bus: FakeBus) -> None:
    bus.connected = False
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok", "service": "gateway"}


def test_readyz_is_503_with_retry_after_until_nats_is_connected(client: FlaskClient, bus: FakeBus) -> None:
    bus.connected = False
    response = client.get("/readyz")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"]["code"] == "service_unavailable"


def test_readyz_reports_what_services_say(client: FlaskClient, bus: FakeBus) -> None:
    bus.health[subjects.health("catalog")] = b'{"service": "catalog", "status": "ok", "database": true}'
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready"
    assert body["services"]["catalog"]["status"] == "ok"
    assert body["services"]["catalog"]["answer"]["database"] is True


def test_readyz_is_200_while_a_service_is_down(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["services"]["catalog"]["status"] == "unavailable"


def test_readyz_reports_a_degraded_service(client: FlaskClient, bus: FakeBus) -> None:
    bus.health[subjects.health("catalog")] = b'{"status": "degraded", "database": false}'
    assert client.get("/readyz").get_json()["services"]["catalog"]["status"] == "degraded"


def test_metrics_and_a_private_api_description_need_the_admin_token(client: FlaskClient, bus: FakeBus) -> None:
    """Issue 13, finding 9: /metrics (routes, counts, errors) answered anyone on the public port."""
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/openapi.json").status_code == 200  # public by default: the API's published contract
    private = create_app(Settings(admin_token="t" * 24, secret="s" * 32, public_openapi=False), bus).test_client()
    assert private.get("/openapi.json").status_code == 401
    assert private.get("/openapi.json", headers={"Authorization": "Bearer " + "t" * 24}).status_code == 200


def test_metrics_count_requests_by_route_template(client: FlaskClient) -> None:
    client.get("/api/products")
    client.get("/api/products/one-sku")  # no catalog answer: 503
    client.get("/api/products/another-sku")
    client.get("/no/such/route")
    response = client.get("/metrics", headers={"Authorization": "Bearer " + "t" * 24})
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }

    def requests(route: str, status: str) -> float:
        key = (("method", "GET"), ("route", route), ("status", status))
        return samples[("cartwheel_gateway_http_requests_total", key)]

    assert requests("/api/products", "200") == 1
    assert requests("/api/products/<id_or_sku>", "503") == 2
    assert requests("<unmatched>", "404") == 1
    count = ("cartwheel_gateway_http_request_duration_seconds_count", (("route", "/api/products/<id_or_sku>"),))
    assert samples[count] == 2


def test_every_route_is_in_the_spec_and_every_spec_path_is_a_route(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    routes = {
        (rule.rule.replace("<", "{").replace(">", "}"), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert routes == documented


def test_the_spec_documents_the_models_the_routes_validate_with(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    with app.app_context():
        operations = gateway().operations
    assert any(op.body for op in operations) and any(op.query for op in operations)
    for op in operations:
        documented = spec["paths"][op.path][op.method.lower()]
        assert app.view_functions[op.endpoint].__name__ == op.view.__name__
        if op.body:
            ref = documented["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            expected = op.body.model_json_schema(ref_template=REF_TEMPLATE)
            expected.pop("$defs", None)
            assert schemas[ref.rsplit("/", 1)[-1]] == expected
        elif op.raw_body:
            assert set(documented["requestBody"]["content"]) == set(op.raw_body)
        else:
            assert "requestBody" not in documented
        query = {p["name"] for p in documented["parameters"] if p["in"] == "query"}
        assert query == (set(op.query.model_fields) if op.query else set())


def test_every_error_response_is_the_error_schema(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"] == "#/components/schemas/ErrorDetail"
    for item in spec["paths"].values():
        for operation in item.values():
            statuses = [int(s) for s in operation["responses"]]
            assert 500 in statuses
            for status in statuses:
                if status >= 400:
                    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_admin_routes_declare_the_bearer_scheme(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["adminBearer"]["scheme"] == "bearer"
    create = spec["paths"]["/api/admin/products"]["post"]
    assert create["security"] == [{"adminBearer": []}]
    assert {"201", "401", "409", "413", "415", "422", "503"} <= set(create["responses"])


# Each of these disagreed with API.md or with what the route answers (tests/e2e/test_api_fuzz.py found the answers).
def test_the_spec_documents_the_headers_and_bodies_routes_read_themselves(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]

    traced = {"traceparent": False, "X-Request-Id": False}  # every route takes them (API.md, "Tracing")

    def headers(path: str, method: str) -> dict[str, bool]:
        found = {p["name"]: p["required"] for p in paths[path][method]["parameters"] if p["in"] == "header"}
        assert found.items() >= traced.items()
        return {name: required for name, required in found.items() if name not in traced}

    assert headers("/api/checkout", "post") == {"Idempotency-Key": False}
    assert headers("/api/admin/inventory/{product_id}/restock", "post") == {"Idempotency-Key": False}
    assert headers("/api/admin/inventory/{product_id}", "put") == {"Idempotency-Key": False}
    assert headers("/webhooks/stripe", "post") == {"Stripe-Signature": True}
    assert list(paths["/webhooks/stripe"]["post"]["requestBody"]["content"]) == ["application/json"]
    upload = paths["/api/admin/products/{id}/image"]["put"]["requestBody"]["content"]
    assert set(upload) == {"image/png", "image/jpeg", "image/webp"}
    assert headers("/api/products/{id}/image", "get") == {"If-None-Match": False}
    assert "content" not in paths["/api/products/{id}/image"]["get"]["responses"]["304"]
    for path in paths.values():
        for operation in path.values():
            assert all({"X-Trace-Id", "X-Request-Id"} <= set(answer["headers"])
                       for answer in operation["responses"].values())


def test_the_spec_documents_what_the_routes_answer_and_take(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    assert "content" not in paths["/api/auth/logout"]["post"]["responses"]["204"]  # no body, so no JSON either
    assert "404" in paths["/api/checkout"]["post"]["responses"]  # a product in `items` that does not exist
    currencies = schemas["ProductDraft"]["properties"]["currency"]["enum"]
    assert {"EUR", "JPY", "KWD"} <= set(currencies) and "XXX" not in currencies  # the ISO codes taken, not [A-Z]{3}
    assert schemas["Registration"]["properties"]["email"]["format"] == "email"
    assert schemas["CheckoutBody"]["properties"]["email"]["format"] == "email"
    patch = schemas["ProductPatch"]  # at least one field, none null: {} and {"name": null} are 422
    assert patch["minProperties"] == 1 and "null" not in str(patch["properties"])
