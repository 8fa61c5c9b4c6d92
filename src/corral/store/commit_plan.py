"""What one group commit of the event log writes: the heads it folds appends into, and the plan.

Shared by both dialects' writers (the SQLite one in `events.py`, the PostgreSQL ones in `commit_pg.py`):
planning is pure (no I/O, no futures), so a writer reads heads, makes a `Plan`, and writes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import NotFound
from ..schemas.common import format_timestamp, from_micros, now_micros, to_micros
from ..schemas.events import Event
from . import tables as t
from .derive import SessionState, apply
from .hub import LoggedEvent

MAX_BATCH = 512
"""Appends committed together at most (bounds one transaction's size and latency)."""


@dataclass
class Head:
    """A session's row as a transaction sees it, advanced by each append folded into it."""

    seq: int
    state: SessionState
    lease_owner: str | None

    @classmethod
    def from_row(cls, row: Any) -> Head:
        return cls(
            row.last_seq, SessionState.load(row.status, bool(row.needs_work), json.loads(row.usage)), row.lease_owner
        )

    def values(self, now: int) -> dict[str, Any]:
        return {
            "last_seq": self.seq,
            "status": self.state.status,
            "needs_work": self.state.needs_work,
            "usage": json.dumps(self.state.usage_json(), separators=(",", ":")),
            "updated_at": now,
        }


def fold_events(
    head: Head,
    session_id: str,
    events: list[Event],
    now: int,
    needs_work: bool | None,
    decided_at: int | None,
) -> tuple[list[dict[str, Any]], list[LoggedEvent], bool]:
    """Number `events` after `head`, fold them into its state: (rows to insert, logged, wakes workers)."""
    state = head.state
    was_pending = state.needs_work
    start = head.seq
    rows: list[dict[str, Any]] = []
    logged: list[LoggedEvent] = []
    for event in events:
        head.seq += 1
        wire = event.model_dump(mode="json")
        body = json.dumps(wire, separators=(",", ":"))
        apply(state, wire, now)
        rows.append(
            {
                "session_id": session_id,
                "seq": head.seq,
                "id": event.id,
                "type": wire["type"],
                "created_at": now,
                "processed_at": to_micros(event.processed_at) if event.processed_at else None,
                "body": body,
                "ref": next((wire[k] for k in REF_FIELDS if wire.get(k)), None),
            }
        )
        logged.append(LoggedEvent(seq=head.seq, type=wire["type"], json=body))
    if needs_work is not None and not (needs_work is False and decided_at is not None and start != decided_at):
        state.needs_work = needs_work
    wakes = (state.needs_work and not was_pending) or any(e.type in WAKE_AGAIN for e in logged)
    return rows, logged, wakes


Record = tuple[str, str, dict[str, Any]]
"""A harness record to write with an append: (key, kind, body)."""


@dataclass
class Pending:
    """One queued `EventLog.append`, waiting for the writer task."""

    session_id: str
    events: list[Event]
    needs_work: bool | None
    owner: str | None
    decided_at: int | None
    future: asyncio.Future[list[LoggedEvent]]
    records: Sequence[Record] = ()
    processed: Sequence[int] = ()
    logged: list[LoggedEvent] = field(default_factory=list)
    wakes: bool = False


@dataclass
class Plan:
    """What one group commit writes, decided from the heads it read (pure: no I/O, no futures)."""

    now: int
    done: list[Pending] = field(default_factory=list)
    failed: list[tuple[Pending, Exception]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    heads: dict[str, Head] = field(default_factory=dict)
    appended: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, batch: list[Pending], heads: dict[str, Head], *, check_owner: bool = True) -> Plan:
        """Fold `batch` into `heads` in order. With `check_owner` false the lease is left for the
        writer to check (the heads may not say who holds it now)."""
        plan = cls(now_micros())
        for item in batch:
            head = heads.get(item.session_id)
            refused = refusal(head, item.session_id, item.owner if check_owner else None)
            if refused is not None:
                plan.failed.append((item, refused))
                continue
            assert head is not None
            rows, item.logged, item.wakes = fold_events(
                head, item.session_id, item.events, plan.now, item.needs_work, item.decided_at
            )
            plan.rows.extend(rows)
            plan.records.extend(
                {
                    "session_id": item.session_id,
                    "key": key,
                    "kind": kind,
                    "created_at": plan.now,
                    "body": json.dumps(body, separators=(",", ":")),
                }
                for key, kind, body in item.records
            )
            if item.processed:
                stamp = '"processed_at":' + json.dumps(format_timestamp(from_micros(plan.now)))
                plan.marks.extend(
                    {
                        "b_session_id": item.session_id,
                        "b_seq": seq,
                        "b_when": plan.now,
                        "b_queued": '"processed_at":null',
                        "b_stamp": stamp,
                    }
                    for seq in item.processed
                )
            plan.heads[item.session_id] = head
            if item.logged and item.session_id not in plan.appended:
                plan.appended.append(item.session_id)
            if item.wakes and item.session_id not in plan.woken:
                plan.woken.append(item.session_id)
            plan.done.append(item)
        return plan

    def keep(self, session_ids: set[str]) -> None:
        """Drop what concerns other sessions (their appends were not written and will be retried)."""
        self.done = [item for item in self.done if item.session_id in session_ids]
        self.heads = {sid: head for sid, head in self.heads.items() if sid in session_ids}
        self.appended = [sid for sid in self.appended if sid in session_ids]
        self.woken = [sid for sid in self.woken if sid in session_ids]

    def head_params(self) -> list[dict[str, Any]]:
        return [
            {"b_id": sid, **{f"b_{k}": v for k, v in head.values(self.now).items()}} for sid, head in self.heads.items()
        ]


def notices(heads: dict[str, int], woken: Iterable[str], origin: str) -> list[tuple[str, list[str]]]:
    """PostgreSQL notifications for a commit: `<session id>:<head>:<origin>` on `corral_events` and
    `<session id>:<origin>` on `corral_wake`, so listeners learn the new head without a query and
    skip their own news. Delivered on commit, dropped on rollback."""
    notices = (
        ("corral_events", [f"{sid}:{head}:{origin}" for sid, head in heads.items()]),
        ("corral_wake", [f"{sid}:{origin}" for sid in woken]),
    )
    return [(channel, payloads) for channel, payloads in notices if payloads]


def refusal(head: Head | None, session_id: str, owner: str | None) -> Exception | None:
    """Why an append may not go ahead: the session is gone, or `owner` no longer holds its lease."""
    if head is None:
        return NotFound("session", session_id)
    if owner is not None and head.lease_owner != owner:
        return LeaseLost(f"worker {owner} no longer holds session {session_id}")
    return None


def fail(batch: list[Pending], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)


class LeaseLost(RuntimeError):
    """The worker's lease on a session expired and another worker may have it: stop touching it."""


class HeadRow(NamedTuple):
    id: str
    last_seq: int
    status: str
    needs_work: int
    usage: str
    lease_owner: str | None


WAKE_AGAIN = frozenset({"user.interrupt"})
REF_FIELDS = ("tool_use_id", "custom_tool_use_id", "mcp_tool_use_id")
HEAD_COLUMNS = (
    t.sessions.c.id,
    t.sessions.c.last_seq,
    t.sessions.c.status,
    t.sessions.c.needs_work,
    t.sessions.c.usage,
    t.sessions.c.lease_owner,
)
