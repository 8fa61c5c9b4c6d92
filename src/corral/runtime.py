"""The `Runtime`: what one corral process runs (store, watcher, workers), built from `Settings`.

`corral serve` and `corral worker` each make one; tests make their own. Nothing here is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .config import Settings
from .harness.loop import Harness
from .harness.mcp import MCPToolsets
from .harness.tools import NoTools, ToolRouter, ToolRunner
from .harness.worker import WorkerPool
from .models.base import ModelClient
from .models.router import ModelRouter
from .store.store import Store
from .store.watch import Watcher
from .vault.crypto import SecretBox
from .vault.keys import KeyRing

if TYPE_CHECKING:
    from .schemas.sessions import Session
    from .vault.broker import SessionCredentials

__all__ = ["Runtime"]

log = logging.getLogger("corral")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.async_database_url, prices=settings.model_prices)
        self.watcher = Watcher(self.store, settings.poll_interval)
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.model: ModelClient | None = None
        self.tools: ToolRunner | None = None
        self.workers: WorkerPool | None = None
        self._keys: KeyRing | None = None
        self._keys_lock = asyncio.Lock()

    async def start(self, *, workers: int | None = None) -> None:
        """Migrate, start watching the log, and run `workers` harness workers (settings by default)."""
        await self.store.migrate()
        await self.watcher.start()
        count = self.settings.workers if workers is None else workers
        if count > 0:
            await self.start_workers(count)

    async def secret_keys(self) -> KeyRing:
        """The keys that encrypt vault secrets. On first use, creates the key file (0600) when no key is
        configured, unless the database already holds secrets (a new key could not read them)."""
        async with self._keys_lock:
            if self._keys is None:
                ring = KeyRing.from_settings(self.settings)
                sample = await self.store.credentials.sample_secret()
                if not ring.exists():
                    if sample is not None:
                        raise RuntimeError(
                            f"the database holds encrypted vault secrets, but there is no key file at {ring.path} "
                            "and CORRAL_SECRET_KEY is unset: restore the key (see docs/configuration.md)"
                        )
                    if ring.create():
                        log.info("created secret key file %s (mode 0600)", ring.path)
                box = ring.box()
                if sample is not None and not box.can_decrypt(sample):
                    log.warning("the secret keys from %s do not decrypt the stored vault secrets", ring.source)
                self._keys = ring
            return self._keys

    def model_client(self) -> ModelClient:
        s = self.settings
        return ModelRouter(
            anthropic_api_key=s.anthropic_api_key,
            anthropic_base_url=s.anthropic_base_url,
            openai_base_url=s.openai_base_url,
            openai_api_key=s.openai_api_key,
        )

    def tool_runner(self) -> ToolRunner:
        """Sandbox tools in the session's sandbox, web tools in this process."""
        from .sandbox.runner import SandboxToolRunner
        from .service.files import blobs_for
        from .service.sandbox_files import SandboxFiles
        from .tools.web import WebTools
        from .vault.broker import SessionCredentials

        async def box() -> SecretBox:
            return (await self.secret_keys()).box()

        async def credentials(session: Session) -> SessionCredentials | None:
            return await SessionCredentials.load(self.store, box, session)

        runners: list[ToolRunner] = [
            SandboxToolRunner.from_settings(
                self.settings,
                environments=self.store.environments.get,
                files=SandboxFiles(self.store, blobs_for(self.settings), max_bytes=self.settings.max_file_bytes),
                credentials=credentials,
            ),
            WebTools.from_settings(self.settings),
        ]
        return ToolRouter(runners, NoTools("it is not available in this deployment"))

    def mcp_toolsets(self) -> MCPToolsets:
        """MCP servers are called from this process, with credentials from the sessions' vaults."""
        from .tools.mcp import MCPClient
        from .vault.mcp_auth import VaultMCPAuth

        s = self.settings
        auth = VaultMCPAuth(self.store, self._secret_box, timeout=s.mcp_timeout_seconds)
        client = MCPClient(timeout=s.mcp_timeout_seconds, tool_timeout=s.mcp_tool_timeout_seconds)
        return MCPToolsets(client, auth.for_session)

    async def _secret_box(self) -> SecretBox:
        return (await self.secret_keys()).box()

    async def start_workers(self, count: int) -> None:
        self.model = self.model or self.model_client()
        self.tools = self.tools or self.tool_runner()
        harness = Harness(self.store, self.model, self.tools, self.settings, mcp=self.mcp_toolsets())
        self.workers = WorkerPool(
            self.store,
            harness,
            slots=count,
            lease_seconds=self.settings.lease_seconds,
            poll_interval=self.settings.poll_interval,
        )
        await self.workers.start()

    async def session_deleted(self, session_id: str) -> None:
        """Drop a deleted session's sandbox and files (here, or on disk when this process runs no tools)."""
        if self.tools is not None:
            await self.tools.forget(session_id)
            return
        from .sandbox.pool import session_dir
        from .sandbox.runner import sandboxes_dir

        await asyncio.to_thread(shutil.rmtree, session_dir(sandboxes_dir(self.settings), session_id), True)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def close(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        if self.tools is not None:
            with contextlib.suppress(Exception):
                await self.tools.aclose()
        if self.model is not None:
            with contextlib.suppress(Exception):
                await self.model.aclose()
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.watcher.stop()
        await self.store.close()
