"""Turn a request's JSON body or query string into a pydantic model, or into a 400/413/415/422 ApiError.

400 when the request is malformed (not JSON, not an object, wrong JSON types, unknown query
parameters); 422 when it is well-formed but a value is refused (out of range, bad pattern, ...).
No text a client sends may hold a NUL character: PostgreSQL can neither store one nor compare with one.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Request
from pydantic import BaseModel, ValidationError

from cartwheel.errors import NotFound
from services.gateway.errors import ApiError, invalid_value

M = TypeVar("M", bound=BaseModel)

MALFORMED_SUFFIXES = ("_type", "_parsing")
MALFORMED_TYPES = {"int_from_float", "json_invalid"}
NUL = "\x00"


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def parse_body(request: Request, model: type[M]) -> M:
    if not is_json(request.mimetype):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    stream = request.stream  # raises 413 from Content-Length alone, before reading a byte
    raw = stream.read()
    stream.read(1)  # a streamed (chunked) body stops at the limit; reading on raises 413
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {_short(error)}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return validate(model, data, source="body")


def parse_query(request: Request, model: type[M]) -> M:
    data: dict[str, str] = {}
    for name, values in request.args.lists():
        if len(values) > 1:
            raise ApiError(400, "bad_request", f"query parameter {name!r} is given more than once")
        if values[0] != "":  # `?q=` means the parameter is not given
            data[name] = values[0]
    return validate(model, data, source="query")


def check_path(values: dict[str, str]) -> None:
    """Path values are names: one with a NUL character names nothing."""
    if any(NUL in value for value in values.values()):
        raise NotFound("nothing has that name")


def validate(model: type[M], data: dict[str, Any], *, source: str) -> M:
    if (where := _nul_at(data)) is not None:
        raise invalid_value(where, "must not contain a NUL character")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise invalid(error, source) from None


def invalid(error: ValidationError, source: str) -> ApiError:
    problems = error.errors(include_url=False, include_input=False)
    fields = [{"field": _field(p["loc"]), "message": _message(p, source)} for p in problems]
    if any(_malformed(p["type"], source) for p in problems):
        where = "query string" if source == "query" else "body"
        return ApiError(400, "bad_request", f"the {where} is malformed", fields=fields)
    return ApiError(422, "validation_failed", "some values are not acceptable", fields=fields)


def _malformed(kind: str, source: str) -> bool:
    if source == "query" and kind == "extra_forbidden":
        return True
    return kind in MALFORMED_TYPES or kind.endswith(MALFORMED_SUFFIXES)


def _nul_at(data: Any) -> str | None:
    """The dotted path of a string holding a NUL character, else None; walked without recursion (any depth)."""
    pending: list[tuple[tuple[int | str, ...], Any]] = [((), data)]
    while pending:
        loc, value = pending.pop()
        if isinstance(value, str) and NUL in value:
            return _field(loc)
        if isinstance(value, dict):
            pending += [((*loc, key), item) for key, item in value.items()]
        elif isinstance(value, list):
            pending += [((*loc, index), item) for index, item in enumerate(value)]
    return None


def _field(loc: tuple[int | str, ...]) -> str | None:
    return ".".join(str(part) for part in loc) or None


def _message(problem: Any, source: str) -> str:
    if problem["type"] == "extra_forbidden":
        return "unknown query parameter" if source == "query" else "unknown field"
    return problem["msg"].removeprefix("Value error, ")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _short(error: Exception) -> str:
    return "nested too deeply" if isinstance(error, RecursionError) else str(error)[:200]
