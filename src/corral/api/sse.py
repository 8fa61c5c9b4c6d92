"""Server-sent events for a session: every event appended after the stream opened, in log order.

Frames are `event: <type>` + `data: <json>` (the SDK drops frames without an `event:` line);
`event: ping` keep-alives flow while nothing happens. A follower registers with the hub *before*
the response starts, so an event sent right after the stream opens can never slip past it.
Previews (`event_start` / `event_delta`, for streams that asked) are slotted in between the stored
events they were produced between.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from ..ids import new_id
from ..schemas.events import SessionDeleted
from ..store.hub import EventHub, LoggedEvent
from ..store.store import Store

__all__ = ["SessionStream"]

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
READ_BATCH = 500


def frame(event_type: str, data: str) -> bytes:
    return f"event: {event_type}\ndata: {data}\n\n".encode()


def _preview_frame(payload: dict[str, Any]) -> bytes:
    return frame(str(payload["type"]), json.dumps(payload, separators=(",", ":")))


def _deleted_event() -> str:
    """`session.deleted` is announced to open streams only: the log it would go into is gone."""
    now = datetime.now(UTC)
    event = SessionDeleted(id=new_id("event"), processed_at=now)
    return event.model_dump_json()


class SessionStream:
    def __init__(self, store: Store, session_id: str, ping_seconds: float, previews: set[str]) -> None:
        self.store = store
        self.session_id = session_id
        self.ping_seconds = ping_seconds
        self.previews = previews
        self._follow = store.hub.follow(session_id, 0)
        self._channel: Any = None
        self._queue: asyncio.Queue[tuple[int, dict[str, Any]]] | None = None
        self._held: list[tuple[int, dict[str, Any]]] = []
        self.last = 0

    async def open(self) -> None:
        """Start following, then take the log's head as the stream's starting point."""
        self._channel = self._follow.__enter__()
        if self.previews:
            self._queue = self.store.hub.add_preview_listener(self.session_id, self.previews)
        try:
            self.last = await self.store.events.head(self.session_id)
        except BaseException:
            self.close()
            raise
        self._channel.head = max(self._channel.head, self.last)

    def close(self) -> None:
        if self._channel is not None:
            if self._queue is not None:
                self.store.hub.remove_preview_listener(self.session_id, self._queue)
            self._follow.__exit__(None, None, None)
            self._channel = None

    def _previews_waiting(self) -> bool:
        return bool(self._held) or (self._queue is not None and not self._queue.empty())

    def _merge(self, batch: list[LoggedEvent]) -> bytes:
        if self._queue is not None:
            while not self._queue.empty():
                self._held.append(self._queue.get_nowait())
        out: list[bytes] = []
        held = self._held
        for event in batch:
            while held and held[0][0] < event.seq:
                out.append(_preview_frame(held.pop(0)[1]))
            out.append(frame(event.type, event.json))
        last = batch[-1].seq if batch else self.last
        while held and held[0][0] <= last:
            out.append(_preview_frame(held.pop(0)[1]))
        return b"".join(out)

    async def frames(self) -> AsyncIterator[bytes]:
        channel = self._channel
        assert channel is not None
        try:
            while True:
                batch = EventHub.since(channel, self.last)
                if batch is None:
                    batch = await self.store.events.read(self.session_id, after=self.last, limit=READ_BATCH)
                    if not batch:
                        # A head announced before its rows are readable here: back off, never spin.
                        await asyncio.sleep(0.005)
                if batch or self._previews_waiting():
                    chunk = self._merge(batch)
                    if batch:
                        self.last = batch[-1].seq
                    if chunk:
                        yield chunk
                        continue
                if channel.closed:
                    yield frame("session.deleted", _deleted_event())
                    return
                ready = (lambda: self._queue is not None and not self._queue.empty()) if self._queue else None
                if not await EventHub.wait(channel, self.last, self.ping_seconds, ready):
                    yield PING
        finally:
            self.close()
