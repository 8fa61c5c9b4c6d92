"""The one place exceptions become the API's error envelope:
`{"type": "error", "error": {"type", "message", "details"?}, "request_id"}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ApiError
from ..store.pages import InvalidCursor

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger("corral.api")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_response(
    request: Request, status: int, error_type: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details:
        error["details"] = details
    headers = {}
    if 400 <= status < 500 and status not in (408, 429):
        headers["x-should-retry"] = "false"  # deterministic: the SDK would otherwise resend 409s
    return JSONResponse(
        {"type": "error", "error": error, "request_id": request_id}, status_code=status, headers=headers
    )


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc)
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            return "request body is not valid JSON"
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}" if where else message)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status_code, exc.error_type, exc.message, exc.details or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 400, "invalid_request_error", _describe(list(exc.errors())))

    @app.exception_handler(InvalidCursor)
    async def _cursor(request: Request, exc: InvalidCursor) -> JSONResponse:
        return error_response(request, 400, "invalid_request_error", str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(request, exc.status_code, _TYPE_BY_STATUS.get(exc.status_code, "api_error"), message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "api_error", "internal server error")
