"""Interrupts while the harness waits: a model call, a tool call or a retry delay is cancelled as soon as a
`user.interrupt` reaches the session's log (seen through the event hub, or read from the store)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..store.hub import EventHub
from ..store.store import Store

__all__ = ["InterruptWatcher", "Interrupted"]

T = TypeVar("T")


class Interrupted(Exception):
    """A `user.interrupt` arrived while an operation was in flight."""


class InterruptWatcher:
    """Watches the session's log for `user.interrupt` while an operation runs, and cancels it."""

    def __init__(self, store: Store, session_id: str, channel: Any, head: int) -> None:
        self.store = store
        self.session_id = session_id
        self.channel = channel
        self.checked = head

    def seen(self, head: int) -> None:
        self.checked = max(self.checked, head)

    async def _interrupt_arrives(self) -> None:
        while True:
            await EventHub.wait(self.channel, self.checked, 3600)
            if self.channel.closed:
                return
            batch = EventHub.since(self.channel, self.checked)
            if batch is None:
                batch = await self.store.events.read(self.session_id, after=self.checked)
            if batch:
                self.checked = batch[-1].seq
                if any(e.type == "user.interrupt" for e in batch):
                    return

    async def guard(self, operation: Awaitable[T], on_interrupt: Callable[[], Awaitable[None]] | None = None) -> T:
        """Run `operation`; raise `Interrupted` (after stopping it) if an interrupt arrives first."""
        op = asyncio.ensure_future(operation)
        stop = asyncio.ensure_future(self._interrupt_arrives())
        try:
            done, _ = await asyncio.wait({op, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            op.cancel()
            stop.cancel()
            raise
        if op in done:
            stop.cancel()
            return op.result()
        if on_interrupt is not None:
            await on_interrupt()
        op.cancel()
        with contextlib.suppress(BaseException):  # how the cancelled operation ended no longer matters
            await op
        raise Interrupted()

    def close(self) -> None:
        return None
