"""`create_app(settings)`: the ASGI application, built from settings with nothing global."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from .. import __version__
from ..config import Settings
from ..ids import new_id
from ..runtime import Runtime
from .deps import authenticate, require_beta
from .errors import install_error_handlers
from .routes import agents, environments, events, session_resources, sessions
from .routes import files as files_routes
from .routes import vaults as vault_routes

__all__ = ["create_app"]


class RequestId:
    """Give every response a `request-id` header (echoed in error bodies)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("request")
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the API. Pass a `runtime` to share one with workers; otherwise the app owns its own."""
    settings = settings or (runtime.settings if runtime else Settings())
    owned = runtime is None
    rt = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await rt.start()
        try:
            if owned:  # the secret key file is made on the first start, not on the first vault request
                await rt.secret_keys()
            yield
        finally:
            if owned:
                await rt.close()

    app = FastAPI(
        title="corral",
        version=__version__,
        summary="A self-hosted Managed Agents API.",
        lifespan=lifespan,
    )
    app.state.runtime = rt
    install_error_handlers(app)
    managed = [Depends(authenticate), Depends(require_beta)]
    for module in (agents, environments, sessions, events):
        app.include_router(module.router, dependencies=managed)
    app.include_router(session_resources.router, dependencies=managed)
    # The SDK sends no `anthropic-beta` header for the Files API: authentication only.
    app.include_router(files_routes.router, dependencies=[Depends(authenticate)])
    app.include_router(vault_routes.router, dependencies=managed)

    @app.get("/health", tags=["meta"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.add_middleware(RequestId)
    return app
