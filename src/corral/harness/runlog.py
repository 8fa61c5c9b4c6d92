"""A worker's copy of one session's log while it holds the lease.

The harness decides every step from a fold of the whole log. Reading the whole log again on every
step made each step cost a full read; instead the first pass of a run reads it once, every append the
worker makes is added to the copy as it commits, and each later pass reads only the session row and
whatever others appended past the copy's head (usually nothing) in one statement. The copy is a cache
of the log, never a source: it is dropped with the run, so a worker that dies loses nothing, and the
next run (in any process) starts again from the log itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..schemas.common import format_timestamp, from_micros, now_micros
from ..schemas.events import Event
from ..schemas.sessions import Session
from ..store.events import Record
from ..store.hub import LoggedEvent
from ..store.store import Store
from .context import Conversation, fold

__all__ = ["RunLog"]


class RunLog:
    """One session's events and harness records as this worker last knew them."""

    def __init__(self, store: Store, session_id: str, owner: str) -> None:
        self.store = store
        self.session_id = session_id
        self.owner = owner
        self.events: dict[int, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.head = 0
        """Every event up to here is in the copy (appends of others may leave gaps above it)."""
        self.loaded = False
        self.session: Session | None = None
        self.chained_span: str | None = None
        """A span start this run appended with its previous step, for the model call it runs next."""
        self._folded: Conversation | None = None
        """The fold of the copy as it stands (None: fold again)."""
        self._expected: tuple[int, int, Conversation] | None = None
        """(last seq, events, fold) a coming append will produce if it lands right after `last seq`."""

    async def refresh(self, hub_head: int) -> Session:
        """Bring the copy up to date with the log; return the session row read with it.

        `hub_head` is where this process's hub last saw the log's head (its own appends at once,
        other processes' through the watcher). Between two model calls the run chained (see
        `Harness._chain`), when the hub has seen nobody else write, the read is skipped: the step goes
        straight to the call it already committed to, exactly as if the read had raced ahead of a
        write landing a moment later (which then waits for the next step)."""
        if self.chained_span is not None and self.session is not None and hub_head <= self.head:
            return self.session
        if not self.loaded:
            session, events, self.records = await self.store.sessions.snapshot(self.session_id)
            self.events = dict(events)
            self.loaded = True
        else:
            session, events = await self.store.sessions.since(self.session_id, self.head)
            if events:
                self.events.update(events)
                self._folded = None
        self.head = max(self.events, default=0)
        self.session = session
        return session

    def fold(self, extra: Sequence[Event] = (), records: Sequence[Record] = ()) -> Conversation:
        """The conversation as the log stands, or as it would stand with `extra` appended."""
        if not extra and not records:
            if self._folded is None:
                self._folded = fold(sorted(self.events.items()), self.records)
            return self._folded
        events = sorted(self.events.items())
        last = events[-1][0] if events else 0
        events.extend((last + i, e.model_dump(mode="json")) for i, e in enumerate(extra, 1))
        return fold(events, {**self.records, **_records(records)})

    def expect(self, convo: Conversation, count: int) -> None:
        """`convo` is what the fold will be once the next append (of `count` events, no processed
        marks) lands: keep it instead of folding again, unless others append in between."""
        self._expected = (max(self.events, default=0), count, convo)

    async def append(
        self,
        events: list[Event],
        *,
        needs_work: bool | None = None,
        decided_at: int | None = None,
        records: Sequence[Record] = (),
        processed: Sequence[int] = (),
    ) -> list[LoggedEvent]:
        """Append under this worker's lease (see `EventLog.append`) and keep the copy in step."""
        expected, self._expected = self._expected, None
        self._folded = None
        logged = await self.store.events.append(
            self.session_id,
            events,
            owner=self.owner,
            needs_work=needs_work,
            decided_at=decided_at,
            records=records,
            processed=processed,
        )
        self.records.update(_records(records))
        stamp = format_timestamp(from_micros(now_micros()))  # the stored stamp differs by microseconds
        for seq in processed:
            if seq in self.events:
                self.events[seq] = {**self.events[seq], "processed_at": stamp}
        for item in logged:
            self.events[item.seq] = json.loads(item.json)
        if logged and logged[0].seq == self.head + 1:
            self.head = logged[-1].seq  # else others appended in between: the next refresh reads the gap
        if expected is not None and not processed and logged:
            last, count, convo = expected
            if logged[0].seq == last + 1 and len(logged) == count and self.head == logged[-1].seq:
                self._folded = convo
        return logged


def _records(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    return {key: {"kind": kind, **body} for key, kind, body in records}
