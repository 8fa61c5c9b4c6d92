"""The event hub: tells live readers (SSE streams, workers) that a session's log grew.

Appends made in this process are handed over directly, with their serialized events, so any number
of streams on one session cost one database write and no reads. Appends made by other processes are
found by a watcher: PostgreSQL `LISTEN/NOTIFY` where available, else a cheap poll of the heads of the
sessions someone is following. The log stays the truth: a reader that falls behind the hub's window
reads the gap from the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["EventHub", "LoggedEvent"]

WINDOW = 2048  # recent events kept per followed session


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    type: str
    json: str
    """The event's wire JSON, exactly as stored."""


@dataclass
class _Channel:
    head: int = 0
    recent: collections.deque[LoggedEvent] = field(default_factory=lambda: collections.deque(maxlen=WINDOW))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    followers: int = 0
    closed: bool = False
    previews: list[tuple[set[str], asyncio.Queue[tuple[int, dict[str, object]]]]] = field(default_factory=list)


class EventHub:
    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._wake_listeners: list[Callable[[str], Awaitable[None] | None]] = []
        self._tasks: set[asyncio.Future[None]] = set()

    # ---- writers -------------------------------------------------------------------------------

    def published(self, session_id: str, events: list[LoggedEvent]) -> None:
        """Events were committed to `session_id`'s log (in order, contiguous)."""
        channel = self._channels.get(session_id)
        if channel is None or not events:
            return
        if channel.recent and events[0].seq != channel.recent[-1].seq + 1:
            channel.recent.clear()  # a gap: readers will fetch it from the database
        channel.recent.extend(events)
        channel.head = max(channel.head, events[-1].seq)
        self._pulse(channel)

    def advanced(self, session_id: str, head: int) -> None:
        """Another process moved the head of `session_id`'s log (contents unknown here)."""
        channel = self._channels.get(session_id)
        if channel is not None and head > channel.head:
            channel.head = head
            self._pulse(channel)

    def closed(self, session_id: str) -> None:
        """The session is gone (deleted): followers should finish."""
        channel = self._channels.get(session_id)
        if channel is not None:
            channel.closed = True
            self._pulse(channel)

    def preview(self, session_id: str, event_type: str, payload: dict[str, object]) -> None:
        """A stream-only preview (`event_start` / `event_delta`) of a buffered `event_type` event.

        Previews are best-effort and never stored: only streams in this process that asked for
        previews of `event_type` receive them. Each is tagged with the log head at the time, so a
        stream can place it between the stored events it came between.
        """
        channel = self._channels.get(session_id)
        if channel is None:
            return
        for wanted, queue in channel.previews:
            if event_type in wanted:
                queue.put_nowait((channel.head, payload))
                channel.changed.set()

    def add_preview_listener(self, session_id: str, wanted: set[str]) -> asyncio.Queue[tuple[int, dict[str, object]]]:
        queue: asyncio.Queue[tuple[int, dict[str, object]]] = asyncio.Queue()
        self._channels[session_id].previews.append((wanted, queue))
        return queue

    def remove_preview_listener(self, session_id: str, queue: asyncio.Queue[tuple[int, dict[str, object]]]) -> None:
        channel = self._channels.get(session_id)
        if channel is not None:
            channel.previews = [(w, q) for w, q in channel.previews if q is not queue]

    def wake(self, session_id: str) -> None:
        """A session has new input for workers."""
        for listener in list(self._wake_listeners):
            result = listener(session_id)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def on_wake(self, listener: Callable[[str], Awaitable[None] | None]) -> None:
        self._wake_listeners.append(listener)

    # ---- readers -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def follow(self, session_id: str, head: int):  # type: ignore[no-untyped-def]
        channel = self._channels.setdefault(session_id, _Channel(head=head))
        channel.head = max(channel.head, head)
        channel.followers += 1
        try:
            yield channel
        finally:
            channel.followers -= 1
            if channel.followers == 0:
                self._channels.pop(session_id, None)

    def followed(self) -> dict[str, int]:
        """Sessions someone follows, with the head the hub knows (for the cross-process watcher)."""
        return {sid: ch.head for sid, ch in self._channels.items()}

    @staticmethod
    def since(channel: _Channel, after: int) -> list[LoggedEvent] | None:
        """Events after `after` from the window, or None when the window does not reach back that far."""
        if channel.head <= after:
            return []
        recent = channel.recent
        # The window must cover (after, head]: it may start late (evicted) or end early (the head
        # moved in another process, contents unknown here). Either way the reader goes to the log.
        if not recent or recent[0].seq > after + 1 or recent[-1].seq < channel.head:
            return None
        start = after + 1 - recent[0].seq
        return list(itertools.islice(recent, start, None))

    @staticmethod
    async def wait(channel: _Channel, after: int, timeout: float, ready: Callable[[], bool] | None = None) -> bool:
        """Wait until the head passes `after` or `ready()` holds (True), or `timeout` elapses (False)."""
        while channel.head <= after and not channel.closed and not (ready and ready()):
            channel.changed.clear()
            try:
                async with asyncio.timeout(timeout):
                    await channel.changed.wait()
            except TimeoutError:
                return False
        return True

    @staticmethod
    def _pulse(channel: _Channel) -> None:
        channel.changed.set()
