"""OpenAPI 3.1 from the route table: the very models the routes validate with."""

from __future__ import annotations

from http import HTTPStatus
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.gateway.api import Header, Operation
from services.gateway.schemas import ErrorResponse
from services.gateway.tenancy import HOST_FREE

DESCRIPTION = ("The Cartwheel shop API: JSON in and out, money as integer cents, one error shape. The shop is the "
               "one the request's Host serves: another host answers 404 `unknown_host` (but /healthz, /readyz, "
               "/metrics).")
UNKNOWN_HOST = "Not Found; `unknown_host` when no shop is served at the request's Host."
REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY = {"admin": [{"adminBearer": []}], "optional": [{}, {"adminBearer": []}]}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
TRACED = {  # on every answer (services/gateway/access.py)
    "X-Trace-Id": {"description": "The trace this request belongs to (32 hex digits): find it in the logs.",
                   "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
    "X-Request-Id": {"description": "The client's own request id when it sent a plain token, else one made up.",
                     "schema": {"type": "string"}},
}
TRACE_PARAMETERS = [  # taken from every request, optional
    {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "W3C trace context: the request continues this trace (an invalid one is ignored)."},
    {"name": "X-Request-Id", "in": "header", "required": False,
     "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
     "description": "The client's id of this request, echoed in the answer and the access log."},
]


def build_spec(operations: list[Operation], *, title: str = "Cartwheel", version: str | None = None) -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for op in operations:
        wanted += [(op.body, "validation")] if op.body else []
        wanted += [(op.response, "serialization")] if op.response else []
    refs, definitions = models_json_schema(wanted, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    ids = {op.endpoint: _operation_id(op) for op in operations}
    for op in operations:
        spec = paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs, schemas)
        if op.links:
            spec["responses"][str(op.status)]["links"] = {
                link.name: {"operationId": ids[link.target], "parameters": link.parameters} for link in op.links
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version or _package_version(), "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"adminBearer": {"type": "http", "scheme": "bearer", "description": "The admin token."}},
        },
    }


def _operation_id(op: Operation) -> str:
    return op.endpoint.replace(".", "_")


def _package_version() -> str:
    try:
        return metadata.version("cartwheel")
    except metadata.PackageNotFoundError:  # running from a source tree that isn't installed
        return "0.0.0"


def _operation(op: Operation, refs: dict[Any, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    parameters = [_path_param(name) for name in op.path_params] + _query_params(op, schemas)
    spec: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters + [_header_param(header) for header in op.headers] + TRACE_PARAMETERS,
        "responses": {str(op.status): _success(op, refs) | {"headers": TRACED}},
    }
    if op.not_modified:
        spec["responses"]["304"] = {"description": HTTPStatus.NOT_MODIFIED.phrase, "headers": TRACED}
    if op.body:
        body = {"application/json": {"schema": refs[(op.body, "validation")]}}
        spec["requestBody"] = {"required": True, "content": body}
    elif op.raw_body:
        spec["requestBody"] = {"required": True, "content": {kind: {"schema": _raw(kind)} for kind in op.raw_body}}
    if op.auth in SECURITY:
        spec["security"] = SECURITY[op.auth]
    error = refs[(ErrorResponse, "serialization")]
    for status in op.error_statuses:
        spec["responses"][str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": error}},
            "headers": TRACED | (RETRY_AFTER if status in (429, 503) else {}),
        }
    if op.path not in HOST_FREE:  # the tenant router's answers, before any route
        spec["responses"].setdefault("404", {"content": {"application/json": {"schema": error}}, "headers": TRACED})
        spec["responses"]["404"]["description"] = UNKNOWN_HOST
    return spec


def _success(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    if op.status == HTTPStatus.NO_CONTENT:
        return {"description": HTTPStatus.NO_CONTENT.phrase}
    if op.response:
        schema = refs[(op.response, "serialization")]
    else:
        schema = {"type": "object"} if op.media_type == "application/json" else {"type": "string"}
    return {"description": HTTPStatus(op.status).phrase, "content": {op.media_type: {"schema": schema}}}


def _raw(media_type: str) -> dict[str, Any]:
    return {"type": "object"} if media_type == "application/json" else {"type": "string", "format": "binary"}


def _header_param(header: Header) -> dict[str, Any]:
    return {
        "name": header.name,
        "in": "header",
        "required": header.required,
        "description": header.description,
        "schema": header.schema,
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query_params(op: Operation, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    if not op.query:
        return []
    schema = op.query.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(schema.get("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params
