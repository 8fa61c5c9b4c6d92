"""Workers: claim sessions that have work, run the harness on them under a heartbeated lease.

Wakes arrive from the hub (this process's appends, or other processes' through the watcher); a
periodic claim of any session with unclaimed work catches the rest, including sessions whose
worker died (their lease expires and the session is re-woken through this same door).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from ..store.events import LeaseLost
from ..store.leases import Leases
from ..store.store import Store
from .loop import Harness

__all__ = ["WorkerPool"]

log = logging.getLogger("corral.worker")


class WorkerPool:
    """Advances up to `slots` sessions at once in this process."""

    def __init__(
        self, store: Store, harness: Harness, *, slots: int, lease_seconds: float, poll_interval: float
    ) -> None:
        self.store = store
        self.harness = harness
        self.slots = slots
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leases = Leases(store.db, lease_seconds)
        self.active: dict[str, asyncio.Task[None]] = {}
        self._woken: asyncio.Queue[str] = asyncio.Queue()
        self._free = asyncio.Semaphore(slots)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.store.hub.on_wake(self._woken.put_nowait)
        self._task = asyncio.create_task(self._dispatch(), name="corral-workers")

    async def _next(self) -> str | None:
        try:
            session_id = await asyncio.wait_for(self._woken.get(), self.poll_interval)
        except TimeoutError:
            return await self.leases.claim_next(self.owner, exclude=set(self.active))
        if session_id in self.active:
            return None  # its runner re-checks for new work when it finishes
        return session_id if await self.leases.claim(session_id, self.owner) else None

    async def _dispatch(self) -> None:
        while True:
            await self._free.acquire()
            session_id = None
            try:
                while session_id is None:
                    session_id = await self._next()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("claiming work failed", exc_info=True)
                self._free.release()
                await asyncio.sleep(self.poll_interval)
                continue
            self.active[session_id] = asyncio.create_task(self._run(session_id), name=f"session-{session_id}")

    async def _run(self, session_id: str) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(session_id, asyncio.current_task()))
        again = False
        try:
            await self.harness.run(session_id, self.owner)
        except LeaseLost:
            log.warning("lost the lease on %s; another worker continues it", session_id)
        except asyncio.CancelledError:
            if self._task is not None and self._task.cancelled():
                raise
        except Exception:
            log.exception("harness failed on %s; it will be retried after the lease expires", session_id)
            await asyncio.sleep(min(self.lease_seconds, 5))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
            with contextlib.suppress(Exception):
                again = await self.leases.release(session_id, self.owner)
            with contextlib.suppress(Exception):
                await self.harness.tools.release(session_id)
            self.active.pop(session_id, None)
            self._free.release()
        if again:
            self._woken.put_nowait(session_id)

    async def _heartbeat(self, session_id: str, runner: asyncio.Task[None] | None) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                alive = await self.leases.heartbeat(session_id, self.owner)
            except Exception:
                log.warning("heartbeat failed for %s", session_id, exc_info=True)
                continue
            if not alive and runner is not None:
                runner.cancel()
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for task in list(self.active.values()):
            task.cancel()
        for task in list(self.active.values()):
            with contextlib.suppress(BaseException):
                await task
