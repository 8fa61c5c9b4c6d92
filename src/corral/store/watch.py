"""Carries news of log growth between processes into this process's hub.

PostgreSQL: a dedicated connection `LISTEN`s on `corral_events` / `corral_wake`. SQLite (and as a
safety net on PostgreSQL): every `poll_interval`, compare the heads of followed sessions with the
database; a followed session that has disappeared was deleted elsewhere, so its streams end.
(Workers find unclaimed work themselves: see `harness/worker.py`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .store import Store

__all__ = ["Watcher"]

log = logging.getLogger("corral.watch")


class Watcher:
    def __init__(self, store: Store, poll_interval: float) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None
        self._refreshes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if not self.store.is_sqlite:
            await self._listen()
        self._task = asyncio.create_task(self._poll(), name="corral-watcher")

    async def _listen(self) -> None:
        import asyncpg

        url = self.store.db.url.replace("postgresql+asyncpg://", "postgresql://")
        try:
            self._listener = await asyncpg.connect(url)
            await self._listener.add_listener("corral_events", self._on_events)
            await self._listener.add_listener("corral_wake", self._on_wake)
        except Exception:  # polling still covers us
            log.warning("LISTEN/NOTIFY unavailable; falling back to polling", exc_info=True)
            self._listener = None

    def _on_events(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        session_id, _, rest = payload.partition(":")
        head, _, origin = rest.partition(":")
        if origin != self.store.events.origin and head.isdigit():
            self.store.events.moved(session_id, int(head))
        if origin == self.store.events.origin or session_id not in self.store.hub.followed():
            return  # our own append: the hub heard it first-hand
        if head.isdigit():
            self.store.hub.advanced(session_id, int(head))
            return
        task = asyncio.ensure_future(self._refresh([session_id]))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    def _on_wake(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        session_id, _, origin = payload.partition(":")
        if origin != self.store.events.origin:  # our own wakes were delivered in-process
            self.store.hub.wake(session_id)

    async def _refresh(self, session_ids: list[str]) -> None:
        heads = await self.store.events.heads(session_ids)
        for session_id in session_ids:
            if session_id in heads:
                self.store.hub.advanced(session_id, heads[session_id])
            else:
                self.store.hub.closed(session_id)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                followed = self.store.hub.followed()
                if followed:
                    await self._refresh(list(followed))
            except Exception:
                log.warning("watcher poll failed", exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
