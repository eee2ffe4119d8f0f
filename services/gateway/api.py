"""A small route table: each route declares its models once; they validate requests and make /openapi.json."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Flask, Response, request
from pydantic import BaseModel

from services.gateway.auth import require_admin
from services.gateway.validation import check_path, parse_body, parse_query

Auth = Literal["none", "optional", "admin"]
View = Callable[..., Any]

_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Header:
    """A request header the view reads itself; declared here so /openapi.json documents it."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from an operation's success to the operation ``target`` (its endpoint, ``module.view``),
    whose ``parameters`` (path parameter name → runtime expression such as ``$response.body#/id``) it supplies:
    how a client, or a stateful fuzzer, goes on from what it just made."""

    name: str
    target: str
    parameters: dict[str, str]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI style: /api/products/{id}
    view: View
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    auth: Auth = "none"
    media_type: str = "application/json"
    tag: str = "shop"
    headers: tuple[Header, ...] = ()
    raw_body: tuple[str, ...] = ()  # media types of a body the view reads as bytes (not validated here)
    not_modified: bool = False  # may answer 304, without a body, to a conditional GET
    links: tuple[Link, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"{self.view.__module__.rsplit('.', 1)[-1]}.{self.view.__name__}"

    @property
    def rule(self) -> str:
        return _PARAM.sub(r"<\1>", self.path)

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)

    @property
    def error_statuses(self) -> list[int]:
        statuses = set(self.errors) | {500}
        if self.body or self.raw_body:
            statuses |= {400, 408, 413, 415, 422}  # 408: the body did not arrive in time (guard.py)
        if self.query:
            statuses |= {400, 422}
        if self.auth != "none":
            statuses |= {401, 429}  # 429: too many wrong admin tokens from this address
        return sorted(statuses)


class Routes:
    """Routes of one module, like a blueprint; :func:`register` adds them to the app."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, summary: str, **options: Any) -> Callable[[View], View]:
        def record(view: View) -> View:
            options.setdefault("tag", self.tag)
            self.operations.append(Operation(method, path, view, summary, **options))
            return view

        return record

    def get(self, path: str, **options: Any) -> Callable[[View], View]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[View], View]:
        return self.route("POST", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[View], View]:
        return self.route("PATCH", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[View], View]:
        return self.route("PUT", path, **options)


def register(app: Flask, groups: Iterable[Routes]) -> list[Operation]:
    operations = [op for group in groups for op in group.operations]
    for op in operations:
        app.add_url_rule(op.rule, endpoint=op.endpoint, view_func=_handler(op), methods=[op.method])
    return operations


def _handler(op: Operation) -> View:
    def handle(**path: str) -> Response:
        if op.auth == "admin":
            require_admin()
        check_path(path)
        arguments: dict[str, Any] = dict(path)
        if op.query:
            arguments["query"] = parse_query(request, op.query)
        if op.body:
            arguments["body"] = parse_body(request, op.body)
        return _respond(op, op.view(**arguments))

    handle.__name__ = op.view.__name__
    return handle


def _respond(op: Operation, result: Any) -> Response:
    """A view returns a Response, a model, or ``(model, headers)``."""
    if isinstance(result, Response):
        return result
    model, headers = result if isinstance(result, tuple) else (result, None)
    return Response(model.model_dump_json(), status=op.status, headers=headers, mimetype="application/json")
