"""The event log: append-only, totally ordered per session, durable before it is acknowledged.

Appends run inside a write transaction (`EventLog.transaction()`) that also folds each event into
the session's derived state, so status, usage and pending work never disagree with the log. After
the commit the hub hears about the new events; on PostgreSQL a `NOTIFY` in the same transaction
tells other processes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import NotFound
from ..schemas.common import format_timestamp, from_micros, now_micros, to_micros
from ..schemas.events import Event
from . import tables as t
from .db import Database
from .derive import SessionState, apply
from .hub import EventHub, LoggedEvent

__all__ = ["EventLog", "LeaseLost", "Tx"]


@dataclass
class Tx:
    """One write transaction on the log. `append` may be called for several sessions."""

    conn: AsyncConnection
    now: int = field(default_factory=now_micros)
    appended: dict[str, list[LoggedEvent]] = field(default_factory=dict)
    woken: set[str] = field(default_factory=set)

    async def append(
        self,
        session_id: str,
        events: list[Event],
        *,
        needs_work: bool | None = None,
        owner: str | None = None,
        decided_at: int | None = None,
    ) -> list[LoggedEvent]:
        """Append `events` after the session's head; fold them into its state.

        `needs_work` overrides the pending-work flag after folding (a worker clears it when it has
        consumed all input, in the same transaction as the events that say so). With `decided_at`
        (the log head the caller's decision was based on), clearing only happens if nothing was
        appended since: input that raced in keeps the session's work pending. With `owner`, the
        append only happens while that worker still holds the session's lease (`LeaseLost` if not).
        """
        row = (
            await self.conn.execute(
                select(
                    t.sessions.c.last_seq,
                    t.sessions.c.status,
                    t.sessions.c.needs_work,
                    t.sessions.c.usage,
                    t.sessions.c.lease_owner,
                )
                .where(t.sessions.c.id == session_id)
                .with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound("session", session_id)
        if owner is not None and row.lease_owner != owner:
            raise LeaseLost(f"worker {owner} no longer holds session {session_id}")
        state = SessionState.load(row.status, bool(row.needs_work), json.loads(row.usage))
        was_pending = state.needs_work
        seq = row.last_seq
        logged: list[LoggedEvent] = []
        rows: list[dict[str, Any]] = []
        for event in events:
            seq += 1
            wire = event.model_dump(mode="json")
            body = json.dumps(wire, separators=(",", ":"))
            apply(state, wire, self.now)
            processed = to_micros(event.processed_at) if event.processed_at else None
            rows.append(
                {
                    "session_id": session_id,
                    "seq": seq,
                    "id": event.id,
                    "type": wire["type"],
                    "created_at": self.now,
                    "processed_at": processed,
                    "body": body,
                    "ref": next((wire[k] for k in _REF_FIELDS if wire.get(k)), None),
                }
            )
            logged.append(LoggedEvent(seq=seq, type=wire["type"], json=body))
        if rows:
            await self.conn.execute(insert(t.events), rows)
        if needs_work is not None and not (
            needs_work is False and decided_at is not None and row.last_seq != decided_at
        ):
            state.needs_work = needs_work
        await self.conn.execute(
            update(t.sessions)
            .where(t.sessions.c.id == session_id)
            .values(
                last_seq=seq,
                status=state.status,
                needs_work=state.needs_work,
                usage=json.dumps(state.usage_json(), separators=(",", ":")),
                updated_at=self.now,
            )
        )
        self.appended.setdefault(session_id, []).extend(logged)
        if (state.needs_work and not was_pending) or any(e.type in _WAKE_AGAIN for e in logged):
            self.woken.add(session_id)
        return logged

    async def record(self, session_id: str, key: str, kind: str, body: dict[str, Any]) -> None:
        """Write a harness record; the primary key rejects a second writer of the same key."""
        await self.conn.execute(
            insert(t.harness_records).values(
                session_id=session_id,
                key=key,
                kind=kind,
                created_at=self.now,
                body=json.dumps(body, separators=(",", ":")),
            )
        )


class LeaseLost(RuntimeError):
    """The worker's lease on a session expired and another worker may have it: stop touching it."""


_WAKE_AGAIN = frozenset({"user.interrupt"})
_REF_FIELDS = ("tool_use_id", "custom_tool_use_id", "mcp_tool_use_id")


class EventLog:
    def __init__(self, db: Database, hub: EventHub) -> None:
        self.db = db
        self.hub = hub

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.db.write() as conn:
            tx = Tx(conn)
            yield tx
            if not self.db.is_sqlite:
                for session_id in tx.appended:
                    await conn.execute(select(func.pg_notify("corral_events", session_id)))
                for session_id in tx.woken:
                    await conn.execute(select(func.pg_notify("corral_wake", session_id)))
        for session_id, logged in tx.appended.items():
            self.hub.published(session_id, logged)
        for session_id in tx.woken:
            self.hub.wake(session_id)

    async def append(
        self, session_id: str, events: list[Event], *, needs_work: bool | None = None
    ) -> list[LoggedEvent]:
        async with self.transaction() as tx:
            return await tx.append(session_id, events, needs_work=needs_work)

    async def read(
        self,
        session_id: str,
        *,
        after: int = 0,
        limit: int = 1000,
        order: Literal["asc", "desc"] = "asc",
        types: list[str] | None = None,
        processed: dict[str, Any] | None = None,
        conn: AsyncConnection | None = None,
    ) -> list[LoggedEvent]:
        """Events of a session past position `after` (or before it, for `desc`), oldest first for asc."""
        query = select(t.events.c.seq, t.events.c.type, t.events.c.body).where(t.events.c.session_id == session_id)
        if order == "asc":
            query = query.where(t.events.c.seq > after).order_by(t.events.c.seq.asc())
        else:
            if after:
                query = query.where(t.events.c.seq < after)
            query = query.order_by(t.events.c.seq.desc())
        if types:
            query = query.where(t.events.c.type.in_(types))
        for op, value in (processed or {}).items():
            if value is not None:
                column = t.events.c.processed_at
                bound = to_micros(value)
                query = query.where(
                    {
                        "gt": column > bound,
                        "gte": column >= bound,
                        "lt": column < bound,
                        "lte": column <= bound,
                    }[op]
                )
        query = query.limit(limit)
        if conn is not None:
            rows = (await conn.execute(query)).all()
        else:
            async with self.db.read() as c:
                rows = (await c.execute(query)).all()
        return [LoggedEvent(seq=r.seq, type=r.type, json=r.body) for r in rows]

    async def find(self, session_id: str, event_id: str) -> dict[str, Any] | None:
        """One event of this session by id, as its wire dict."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(t.events.c.body).where(t.events.c.session_id == session_id, t.events.c.id == event_id)
                )
            ).first()
        return None if row is None else json.loads(row.body)

    async def replies_to(self, session_id: str, event_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Events answering each of `event_ids` (results, confirmations), by the id they answer."""
        found: dict[str, list[dict[str, Any]]] = {}
        if not event_ids:
            return found
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(t.events.c.ref, t.events.c.body)
                    .where(t.events.c.session_id == session_id, t.events.c.ref.in_(event_ids))
                    .order_by(t.events.c.seq)
                )
            ).all()
        for row in rows:
            found.setdefault(row.ref, []).append(json.loads(row.body))
        return found

    async def load(self, session_id: str) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, dict[str, Any]]]:
        """The whole log of a session (seq, wire dict) and its harness records by key, in one read."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(t.events.c.seq, t.events.c.body)
                    .where(t.events.c.session_id == session_id)
                    .order_by(t.events.c.seq)
                )
            ).all()
            records = (
                await conn.execute(
                    select(t.harness_records.c.key, t.harness_records.c.kind, t.harness_records.c.body).where(
                        t.harness_records.c.session_id == session_id
                    )
                )
            ).all()
        return (
            [(r.seq, json.loads(r.body)) for r in rows],
            {r.key: {"kind": r.kind, **json.loads(r.body)} for r in records},
        )

    async def head(self, session_id: str) -> int:
        async with self.db.read() as conn:
            value = (await conn.execute(select(t.sessions.c.last_seq).where(t.sessions.c.id == session_id))).scalar()
        if value is None:
            raise NotFound("session", session_id)
        return int(value)

    async def heads(self, session_ids: list[str]) -> dict[str, int]:
        if not session_ids:
            return {}
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(t.sessions.c.id, t.sessions.c.last_seq).where(t.sessions.c.id.in_(session_ids))
                )
            ).all()
        return {r.id: int(r.last_seq) for r in rows}

    @staticmethod
    async def mark_processed(conn: AsyncConnection, session_id: str, seqs: list[int], when: int) -> None:
        """Set `processed_at` on queued client events: the one change the log ever makes to an event."""
        if not seqs:
            return
        stamp = json.dumps(format_timestamp(from_micros(when)))
        await conn.execute(
            update(t.events)
            .where(
                t.events.c.session_id == session_id,
                t.events.c.seq.in_(seqs),
                t.events.c.processed_at.is_(None),
            )
            .values(
                processed_at=when,
                body=func.replace(t.events.c.body, '"processed_at":null', '"processed_at":' + stamp),
            )
        )
