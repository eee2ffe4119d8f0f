"""Domain errors that cross service boundaries, and the HTTP status each code maps to."""

from __future__ import annotations

from typing import Any

STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "invalid_signature": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "cart_closed": 409,
    "currency_mismatch": 409,
    "duplicate_sku": 409,
    "out_of_stock": 409,
    "price_changed": 409,
    "illegal_transition": 409,
    "order_closed": 409,
    "payment_not_ready": 409,
    "not_for_sale": 409,
    "below_reserved": 409,
    "reservation_closed": 409,
    "reservation_committed": 409,
    "reservation_expired": 409,
    "reservation_not_found": 409,
    "reservation_released": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_failed": 422,
    "empty_cart": 422,
    "nothing_to_pay": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "service_unavailable": 503,
    "payment_provider_unavailable": 503,
    "payment_provider_busy": 503,
    "mail_unavailable": 503,
}


class DomainError(Exception):
    """A refusal a client can act on; carried in replies as ``{"code", "message", ...details}``."""

    code = "conflict"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class NotFound(DomainError):
    code = "not_found"


class Invalid(DomainError):
    code = "validation_failed"


class ServiceUnavailable(Exception):
    """A service did not answer in time, or nobody is listening on its subject."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"{subject}: {reason}")
        self.subject = subject
        self.reason = reason


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 400 if code else 500)
