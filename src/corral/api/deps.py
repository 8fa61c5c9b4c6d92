"""Request dependencies: the runtime, authentication and the beta header."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from fastapi import Request

from ..errors import AuthenticationFailed, InvalidRequest
from ..runtime import Runtime
from ..store.store import Store
from ..vault.crypto import SecretBox

__all__ = ["authenticate", "get_runtime", "get_store", "require_beta"]

BETA = "managed-agents-2026-04-01"
_KEYS_CACHE_SECONDS = 2.0


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_store(request: Request) -> Store:
    return get_runtime(request).store


def get_box_source(request: Request) -> Callable[[], Awaitable[SecretBox]]:
    """The vault keys, loaded only if the request turns out to need them (e.g. to encrypt a token)."""
    runtime = get_runtime(request)

    async def box() -> SecretBox:
        return (await runtime.secret_keys()).box()

    return box


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


async def _auth_required(request: Request, runtime: Runtime) -> bool:
    if runtime.settings.api_key:
        return True
    state = request.app.state
    cached = getattr(state, "keys_exist", None)
    if cached is None or time.monotonic() - cached[1] > _KEYS_CACHE_SECONDS:
        cached = (await runtime.store.keys.any_active(), time.monotonic())
        state.keys_exist = cached
    return bool(cached[0])


async def authenticate(request: Request) -> None:
    """Accept `x-api-key` or `Authorization: Bearer`, checked against CORRAL_API_KEY and stored keys."""
    runtime = get_runtime(request)
    if not await _auth_required(request, runtime):
        return
    key = _presented_key(request)
    if key is None:
        raise AuthenticationFailed("missing API key: send it as `x-api-key` or `Authorization: Bearer`")
    if runtime.settings.api_key and hmac.compare_digest(key.encode(), runtime.settings.api_key.encode()):
        return
    if not await runtime.store.keys.verify(key):
        raise AuthenticationFailed("invalid API key")


async def require_beta(request: Request) -> None:
    """Managed Agents endpoints need `anthropic-beta: managed-agents-2026-04-01` (a comma-separated set).

    Not applied to `/v1/files`: the SDK sends no beta header there (see `create_app`)."""
    betas = {b.strip() for h in request.headers.getlist("anthropic-beta") for b in h.split(",")}
    if BETA not in betas:
        raise InvalidRequest(f"this endpoint requires the `anthropic-beta: {BETA}` header")
