"""A worker's copy of one session's log while it holds the lease.

The harness decides every step from a fold of the whole log. Reading the whole log again on every
step made each step cost a full read; instead the first pass of a run reads it once, every append the
worker makes is added to the copy as it commits, and each later pass reads only the session row and
whatever others appended past the copy's head (usually nothing) in one statement. The fold is carried
the same way (`context.Fold`): the whole copy is folded once, then each of the worker's own appends is
folded onto it; only events others appended make it fold the whole copy again. An append that opens
the next model call may still be committing while that call is sent (`append_behind`). The copy is a
cache of the log, never a source: it is dropped with the run, so a worker that dies loses nothing, and
the next run (in any process) starts again from the log itself.

With CORRAL_VERIFY_FOLD=1 in the environment (tests/conftest.py sets it) every carried fold is checked
against a fold of the whole copy, and a difference raises.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..schemas.common import format_timestamp, from_micros, now_micros
from ..schemas.events import Event
from ..schemas.sessions import Session
from ..store.events import Record
from ..store.hub import LoggedEvent
from ..store.store import Store
from .context import Conversation, Fold

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
        self._fold: Fold | None = None
        """The fold of the copy as it stands, carried forward by this worker's appends (None: fold the
        whole copy again)."""
        self._verify_fold = os.environ.get("CORRAL_VERIFY_FOLD") == "1"
        self._expected: tuple[int, Fold] | None = None
        """(events, fold) a coming append will produce if it lands right after the copy's last event."""
        self._behind: asyncio.Task[list[LoggedEvent]] | None = None
        """An append still committing while the run goes on (`append_behind`)."""
        self._ahead: Fold | None = None
        """The fold as it will stand once `_behind` lands."""

    async def refresh(self, hub_head: int) -> Session:
        """Bring the copy up to date with the log; return the session row read with it.

        `hub_head` is where this process's hub last saw the log's head (its own appends at once,
        other processes' through the watcher). Between two model calls the run chained (see
        `Harness._chain`), when the hub has seen nobody else write, the read is skipped: the step goes
        straight to the call it already committed to, exactly as if the read had raced ahead of a
        write landing a moment later (which then waits for the next step)."""
        if self.chained_span is not None and self.session is not None and hub_head <= self.head:
            return self.session
        await self.settle()
        if not self.loaded:
            session, events, self.records = await self.store.sessions.snapshot(self.session_id)
            self.events = dict(events)
            self.loaded = True
        else:
            session, events = await self.store.sessions.since(self.session_id, self.head)
            if events:
                self.events.update(events)
                self._fold = None
        self.head = max(self.events, default=0)
        self.session = session
        return session

    def fold(self) -> Conversation:
        """The conversation as the log stands (with an append still committing: as it will stand)."""
        return self._current().result()

    def ahead(self, extra: Sequence[Event], records: Sequence[Record] = (), processed: Sequence[int] = ()) -> Fold:
        """The fold as it would stand with `extra` (and `records`, and the queued input at `processed` taken
        in) appended, leaving the copy's as it is."""
        state = self._current()
        # an input waiting for an event not in the copy: only a fold of the whole copy places it
        state = state.clone() if state.carried else self._fold_all()
        for key, body in _records(records).items():
            state.record(key, body)
        if processed and not state.take_in(self._taken(processed)):
            events = {**self.events, **dict(self._taken(processed))}
            state = Fold({**self.records, **_records(records)})
            for seq, event in sorted(events.items()):
                state.add(seq, event)
        for event in extra:
            state.add(state.last + 1, event.model_dump(mode="json"))
        return state

    def expect(self, state: Fold, count: int) -> None:
        """`state` is what the fold will be once the next append (of `count` events) lands right after the
        copy's last event: keep it instead of folding the append again."""
        self._expected = (count, state)

    def _current(self) -> Fold:
        if self._behind is not None and self._ahead is not None:
            return self._ahead
        return self._state()

    def _taken(self, processed: Sequence[int]) -> list[tuple[int, dict[str, Any]]]:
        """The queued events at `processed`, as they read once taken in."""
        stamp = format_timestamp(from_micros(now_micros()))  # the stored stamp differs by microseconds
        return [(seq, {**self.events[seq], "processed_at": stamp}) for seq in processed if seq in self.events]

    def _state(self) -> Fold:
        if self._fold is None:
            self._fold = self._fold_all()
        elif self._verify_fold:
            self._verify(self._fold)
        return self._fold

    def _fold_all(self) -> Fold:
        state = Fold(dict(self.records))
        for seq, event in sorted(self.events.items()):
            state.add(seq, event)
        return state

    def _verify(self, state: Fold) -> None:
        carried, whole = state.result(), self._fold_all().result()
        if carried != whole:
            raise AssertionError(f"carried fold of {self.session_id} differs:\n{carried}\nwhole:\n{whole}")

    async def append(
        self,
        events: list[Event],
        *,
        needs_work: bool | None = None,
        decided_at: int | None = None,
        records: Sequence[Record] = (),
        processed: Sequence[int] = (),
    ) -> list[LoggedEvent]:
        """Append under this worker's lease (see `EventLog.append`) and keep the copy in step. An append
        still committing behind (`append_behind`) lands first: a run's appends stay in order."""
        await self.settle()
        return await self._append(_Append(events, needs_work, decided_at, records, processed))

    def append_behind(
        self,
        events: list[Event],
        records: Sequence[Record],
        processed: Sequence[int],
        then: Callable[[], Awaitable[None]],
    ) -> None:
        """Start an append that ends with a chained span start (see `expect`) and return at once: the
        model call it opens is sent while the append commits. `settle` (which the call does before it
        looks at the model's answer), every later append and every read of the log wait for it, so
        nothing of the call is shown or stored before the events that precede it, and a failed
        append (the lease was lost) stops the run there. `then` runs once it has landed."""
        assert self._behind is None and self._expected is not None
        self._ahead = self._expected[1]
        landing = self._append(_Append(events, None, None, records, processed))

        async def commit() -> list[LoggedEvent]:
            logged = await landing
            await then()
            return logged

        self._behind = asyncio.ensure_future(commit())

    async def settle(self) -> None:
        """Wait until an append started with `append_behind` has landed; raise what it raised."""
        task = self._behind
        if task is None:
            return
        try:
            await asyncio.shield(task)  # a caller cancelled meanwhile leaves the append to finish
        finally:
            if task.done() and self._behind is task:
                self._behind = self._ahead = None

    def _append(self, append: _Append) -> Awaitable[list[LoggedEvent]]:
        """Take the fold (and what it is expected to become) now, while the copy is as the caller saw it."""
        expected, self._expected = self._expected, None
        state, self._fold = self._fold, None
        return self._land(append, expected, state)

    async def _land(self, append: _Append, expected: tuple[int, Fold] | None, state: Fold | None) -> list[LoggedEvent]:
        records, processed = append.records, append.processed
        logged = await self.store.events.append(
            self.session_id,
            append.events,
            owner=self.owner,
            needs_work=append.needs_work,
            decided_at=append.decided_at,
            records=records,
            processed=processed,
        )
        new_records = _records(records)
        self.records.update(new_records)
        taken = self._taken(processed)
        self.events.update(taken)
        for item in logged:
            self.events[item.seq] = json.loads(item.json)
        if logged and logged[0].seq == self.head + 1:
            self.head = logged[-1].seq  # else others appended in between: the next refresh reads the gap
        # carry the fold when the append landed right after what it had folded (else fold the whole copy
        # again when it is next needed)
        if state is None or (logged and logged[0].seq != state.last + 1):
            return logged
        if expected is not None and len(logged) == expected[0] and (not logged or self.head == logged[-1].seq):
            self._fold = expected[1]
            return logged
        for key, body in new_records.items():
            state.record(key, body)
        if taken and not state.take_in(taken):
            return logged
        for item in logged:
            state.add(item.seq, self.events[item.seq])
        self._fold = state
        return logged


@dataclass(frozen=True)
class _Append:
    """One append of the run (see `EventLog.append` for the fields)."""

    events: list[Event]
    needs_work: bool | None
    decided_at: int | None
    records: Sequence[Record]
    processed: Sequence[int]


def _records(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    return {key: {"kind": kind, **body} for key, kind, body in records}
