"""What every message carries, and the envelope of every reply."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cartwheel.tenants import context as tenant_context

MAX_PAGE_CURSOR = 600  # a service's cursor (the catalog's are at most 500) plus the gateway's signature
PageCursor = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", max_length=MAX_PAGE_CURSOR),  # URL-safe: fits any request line
    Field(description="`next_cursor` of the previous page, exactly as given (the gateway signs it)."),
]


def new_id() -> str:
    return str(uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of commands, queries and events. Unknown fields are ignored so changes stay additive."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_id)
    occurred_at: datetime = Field(default_factory=utcnow)
    tenant: str = Field(default_factory=tenant_context.current)
    """Whose message it is. Left out, the tenant whose work is in hand (a saga's release for acme's order is acme's),
    else the installation's own."""
    schema_version: int = 1


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class Reply(BaseModel):
    """Answer to a request: ``data`` when ``ok``, else ``error``."""

    ok: bool
    data: Any = None
    error: ErrorBody | None = None

    @classmethod
    def success(cls, data: Any) -> Reply:
        return cls(ok=True, data=data)

    @classmethod
    def failure(cls, code: str, message: str, **details: Any) -> Reply:
        return cls(ok=False, error=ErrorBody(code=code, message=message, **details))
