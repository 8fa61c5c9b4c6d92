"""OAuth 2.0 token refresh (RFC 6749 §6) for `mcp_oauth` credentials.

The request goes to the credential's `refresh.token_endpoint` with its client authentication
(`none`: client_id in the form; `client_secret_basic`: HTTP Basic; `client_secret_post`: client_id and
client_secret in the form) and, when set, `scope` and `resource` (RFC 8707). Token values never leave
this module except in the returned `Grant`; `http_response()` redacts them from the body it reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from ..schemas.vaults import MCPOAuthRefresh

__all__ = ["Grant", "RefreshFailed", "http_response", "refresh_access_token"]

MAX_BODY = 4096
_SECRET_FIELDS = ("access_token", "refresh_token", "id_token")


@dataclass(frozen=True)
class Grant:
    access_token: str
    expires_in: float | None
    refresh_token: str | None
    """A rotated refresh token, when the server issued one."""
    response: dict[str, Any]
    """The token endpoint's answer as an `http_response` object (tokens redacted)."""


class RefreshFailed(Exception):
    """The token endpoint could not be reached (`connect_error`) or refused the refresh (`failed`)."""

    def __init__(self, status: str, message: str, response: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.response = response


def http_response(response: httpx.Response) -> dict[str, Any]:
    """`{status_code, content_type, body, body_truncated}` of a response, with token values redacted."""
    body = response.text
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        body = json.dumps({k: "[redacted]" if k in _SECRET_FIELDS else v for k, v in parsed.items()})
    return {
        "status_code": response.status_code,
        "content_type": response.headers.get("content-type", ""),
        "body": body[:MAX_BODY],
        "body_truncated": len(body) > MAX_BODY,
    }


async def refresh_access_token(refresh: MCPOAuthRefresh, secret: dict[str, str], *, timeout: float) -> Grant:
    """Trade the stored refresh token for a new access token."""
    refresh_token = secret.get("refresh_token")
    if not refresh_token:
        raise RefreshFailed("no_refresh_token", "the credential holds no refresh token")
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if refresh.scope:
        form["scope"] = refresh.scope
    if refresh.resource:
        form["resource"] = refresh.resource
    auth: tuple[str, str] | None = None
    method = refresh.token_endpoint_auth.type
    if method == "client_secret_basic":
        # RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding
        auth = (quote(refresh.client_id, safe=""), quote(secret.get("client_secret", ""), safe=""))
    else:
        form["client_id"] = refresh.client_id
        if method == "client_secret_post":
            form["client_secret"] = secret.get("client_secret", "")
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(
                refresh.token_endpoint, data=form, auth=auth, headers={"Accept": "application/json"}
            )
    except httpx.HTTPError as exc:
        raise RefreshFailed("connect_error", f"could not reach the token endpoint ({type(exc).__name__})") from None
    reported = http_response(response)
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code != 200 or not isinstance(data, dict) or not data.get("access_token"):
        error = data.get("error") if isinstance(data, dict) else None
        detail = f": {error}" if isinstance(error, str) else ""
        raise RefreshFailed(
            "failed", f"the token endpoint refused the refresh (HTTP {response.status_code}{detail})", reported
        )
    expires_in = data.get("expires_in")
    return Grant(
        access_token=str(data["access_token"]),
        expires_in=float(expires_in) if isinstance(expires_in, int | float) else None,
        refresh_token=str(data["refresh_token"]) if data.get("refresh_token") else None,
        response=reported,
    )
