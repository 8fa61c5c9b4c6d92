"""The `Runtime`: what one corral process runs (store, watcher, workers), built from `Settings`.

`corral serve` and `corral worker` each make one; tests make their own. Nothing here is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .config import Settings
from .store.store import Store
from .store.watch import Watcher

__all__ = ["Runtime"]

log = logging.getLogger("corral")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.async_database_url)
        self.watcher = Watcher(self.store, settings.poll_interval)
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        await self.store.migrate()
        await self.watcher.start()

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def close(self) -> None:
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
