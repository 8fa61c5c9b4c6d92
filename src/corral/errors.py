"""Domain errors, each knowing the API error it becomes. Raised anywhere; mapped once in `api/errors.py`."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "AuthenticationFailed",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "RequestTooLarge",
]


class ApiError(Exception):
    status_code = 500
    error_type = "api_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        if code is not None:
            self.details["error_code"] = code


class InvalidRequest(ApiError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(ApiError):
    status_code = 401
    error_type = "authentication_error"


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found_error"

    def __init__(self, kind: str, ident: str, *, code: str | None = None) -> None:
        super().__init__(f"{kind} {ident} not found", code=code)


class Conflict(ApiError):
    """A deterministic conflict (a name taken, a stale version): retrying will not help."""

    status_code = 409
    error_type = "conflict_error"


class RequestTooLarge(ApiError):
    """A request body (an upload) over the configured limit."""

    status_code = 413
    error_type = "request_too_large"
