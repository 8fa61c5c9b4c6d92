"""The event log: append-only, totally ordered per session, durable before it is acknowledged.

Every append folds its events into the session's derived state in the same transaction, so status,
usage and pending work never disagree with the log. After the commit the hub hears about the new
events; on PostgreSQL a `NOTIFY` in the same transaction tells other processes.

Two ways in: `EventLog.append` (events for one session: API sends, most harness steps) goes through
group commit: appends queued while a commit is in flight are written together by one writer task,
in one transaction with a constant number of statements, so throughput grows with concurrency
instead of queueing on SQLite's single writer. `EventLog.transaction()` is the general form for
writes that must go with other statements (harness records, processed marks, session updates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import NotFound
from ..schemas.common import now_micros, to_micros
from ..schemas.events import Event
from . import commit_pg
from . import tables as t
from .commit_plan import (
    HEAD_COLUMNS,
    MAX_BATCH,
    Head,
    HeadRow,
    LeaseLost,
    Pending,
    Plan,
    Record,
    fail,
    fold_events,
    notices,
    refusal,
)
from .db import Database, pg_sql, sqlite_sql
from .hub import EventHub, LoggedEvent

if TYPE_CHECKING:
    import asyncpg

__all__ = ["EventLog", "LeaseLost", "Record", "Tx"]

log = logging.getLogger(__name__)


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
            await self.conn.execute(select(*HEAD_COLUMNS).where(t.sessions.c.id == session_id).with_for_update())
        ).first()
        head = None if row is None else Head.from_row(row)
        refused = refusal(head, session_id, owner)
        if refused is not None:
            raise refused
        assert head is not None
        rows, logged, wakes = fold_events(head, session_id, events, self.now, needs_work, decided_at)
        if rows:
            await self.conn.execute(insert(t.events), rows)
        await self.conn.execute(update(t.sessions).where(t.sessions.c.id == session_id).values(**head.values(self.now)))
        self.appended.setdefault(session_id, []).extend(logged)
        if wakes:
            self.woken.add(session_id)
        return logged


def _write_sqlite(conn: sqlite3.Connection, batch: list[Pending], session_ids: list[str]) -> Plan:
    """The group commit on SQLite: runs on the database's writer thread, inside its transaction."""
    marks = ",".join("?" * len(session_ids))
    found = conn.execute(_SQLITE_HEADS.format(marks=marks), session_ids).fetchall()
    plan = Plan.make(batch, {row[0]: Head.from_row(HeadRow(*row)) for row in found})
    if plan.rows:
        conn.executemany(_SQLITE_INSERT[0], [tuple(r[k] for k in _SQLITE_INSERT[1]) for r in plan.rows])
    if plan.heads:
        conn.executemany(_SQLITE_UPDATE[0], [tuple(p[k] for k in _SQLITE_UPDATE[1]) for p in plan.head_params()])
    if plan.records:
        conn.executemany(_SQLITE_RECORD[0], [tuple(r[k] for k in _SQLITE_RECORD[1]) for r in plan.records])
    if plan.marks:
        conn.executemany(_SQLITE_MARK[0], [tuple(m[k] for k in _SQLITE_MARK[1]) for m in plan.marks])
    return plan


Records = dict[str, dict[str, Any]]
"""A session's harness records by key: {"kind": ..., **body}."""


def _parse_log(rows: Any, records: Any) -> tuple[list[tuple[int, dict[str, Any]]], Records]:
    """(seq, wire dict) per event and records by key, from rows of `_LOG` and `_RECORDS`."""
    return (
        [(seq, json.loads(body)) for seq, body in rows],
        {key: {"kind": kind, **json.loads(body)} for key, kind, body in records},
    )


_UPDATE_HEAD = (
    update(t.sessions)
    .where(t.sessions.c.id == bindparam("b_id"))
    .values(
        last_seq=bindparam("b_last_seq"),
        status=bindparam("b_status"),
        needs_work=bindparam("b_needs_work"),
        usage=bindparam("b_usage"),
        updated_at=bindparam("b_updated_at"),
    )
)
_HEAD_NAMES = ", ".join(c.name for c in HEAD_COLUMNS)
_SQLITE_HEADS = f"SELECT {_HEAD_NAMES} FROM {t.sessions.name} WHERE {t.sessions.c.id.name} IN ({{marks}})"
_SQLITE_INSERT = sqlite_sql(insert(t.events).values({c.name: bindparam(c.name) for c in t.events.c}))
_SQLITE_UPDATE = sqlite_sql(_UPDATE_HEAD)
_LOG = select(t.events.c.seq, t.events.c.body).order_by(t.events.c.seq)
_RECORDS = select(t.harness_records.c.key, t.harness_records.c.kind, t.harness_records.c.body)
_SQLITE_LOG = sqlite_sql(_LOG.where(t.events.c.session_id == bindparam("sid")))[0]
_SQLITE_RECORDS = sqlite_sql(_RECORDS.where(t.harness_records.c.session_id == bindparam("sid")))[0]
_PG_LOG = pg_sql(_LOG.where(t.events.c.session_id == bindparam("sid")))[0]
_PG_RECORDS = pg_sql(_RECORDS.where(t.harness_records.c.session_id == bindparam("sid")))[0]
_NOTIFY_ALL = text("SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload")
_MARK_PROCESSED = (
    update(t.events)
    .where(
        t.events.c.session_id == bindparam("b_session_id"),
        t.events.c.seq == bindparam("b_seq"),
        t.events.c.processed_at.is_(None),
    )
    .values(
        processed_at=bindparam("b_when"),
        body=func.replace(t.events.c.body, bindparam("b_queued"), bindparam("b_stamp")),
    )
)
"""Set `processed_at` on a queued client event: the one change the log ever makes to an event."""
_SQLITE_RECORD = sqlite_sql(insert(t.harness_records).values({c.name: bindparam(c.name) for c in t.harness_records.c}))
_SQLITE_MARK = sqlite_sql(_MARK_PROCESSED)


class EventLog:
    def __init__(self, db: Database, hub: EventHub) -> None:
        self.db = db
        self.hub = hub
        self._queue: list[Pending] = []
        self._committing: list[Pending] = []
        self.origin = uuid.uuid4().hex[:12]
        """Names this process in its notifications, so its own are recognised and skipped."""
        self._writer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._known = commit_pg.KnownHeads()
        """PostgreSQL: session heads as this process last wrote them (see `commit_pg`)."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.db.write() as conn:
            tx = Tx(conn)
            yield tx
            await self._notify(conn, {sid: logged[-1].seq for sid, logged in tx.appended.items() if logged}, tx.woken)
        for session_id, logged in tx.appended.items():
            self.hub.published(session_id, logged)
        for session_id in tx.woken:
            self.hub.wake(session_id)

    async def _notify(self, conn: AsyncConnection, heads: dict[str, int], woken: Iterable[str]) -> None:
        """Tell other processes (PostgreSQL), in the transaction (see `notices`)."""
        if self.db.is_sqlite:
            return
        for channel, payloads in notices(heads, woken, self.origin):  # one statement per channel
            await conn.execute(_NOTIFY_ALL, {"channel": channel, "payloads": payloads})

    async def append(
        self,
        session_id: str,
        events: list[Event],
        *,
        needs_work: bool | None = None,
        owner: str | None = None,
        decided_at: int | None = None,
        records: Sequence[Record] = (),
        processed: Sequence[int] = (),
    ) -> list[LoggedEvent]:
        """Append `events` to one session's log (see `Tx.append` for the options); returns them as logged.

        In the same transaction: `records` are written as harness records (their primary key refuses
        a second writer of the same key: the append fails), and the queued client events at positions
        `processed` get their `processed_at`.

        Returns once they are committed. Appends queued meanwhile by other tasks are committed in the
        same transaction; each one still succeeds or fails (`NotFound`, `LeaseLost`, a taken record key)
        on its own.
        """
        future: asyncio.Future[list[LoggedEvent]] = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(session_id, events, needs_work, owner, decided_at, future, records, processed))
        self._ensure_writer()
        assert self._wakeup is not None
        self._wakeup.set()
        return await asyncio.shield(future)

    def _ensure_writer(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._writer = loop.create_task(self._write_forever(), name="corral-event-writer")

    async def _write_forever(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                self._committing = batch
                try:
                    await self._commit(batch)
                except Exception as exc:
                    if len(batch) == 1:
                        fail(batch, exc)
                        continue
                    # Isolate the culprit: commit each append still waiting on its own.
                    log.warning("group commit of %d appends failed (%s); retrying them one by one", len(batch), exc)
                    for one in batch:
                        if one.future.done():
                            continue
                        try:
                            await self._commit([one])
                        except Exception as one_exc:
                            fail([one], one_exc)
                except BaseException as exc:
                    fail(batch, exc)
                    raise
                finally:
                    self._committing = []

    async def _commit(self, batch: list[Pending]) -> None:
        """Write `batch` together: read the heads, fold, write; then tell the hub and the callers.

        On PostgreSQL, appends to sessions whose head this process knows are written first in one
        unlocked, conditional statement (see `commit_pg`); the rest, and any the condition turned
        away, in one locked transaction."""
        if self.db.is_sqlite:
            session_ids = sorted({item.session_id for item in batch})
            try:
                plan = await self.db.run_sqlite_write(lambda conn: _write_sqlite(conn, batch, session_ids))
            except sqlite3.Error as e:  # the same exception types as the SQLAlchemy paths raise
                raise DBAPIError.instance(None, None, e, sqlite3.Error) from e
            self._settle(plan)
            return
        known, rest = self._known.split(batch)
        if known:
            heads = self._known.heads({item.session_id for item in known})
            plan, rows, retry = await self.db.run_pg(
                lambda conn: commit_pg.write_known(conn, known, heads, self.origin), transaction=False
            )
            self._known.remember(rows)
            for item in retry:
                self._known.forget(item.session_id)
            self._settle(plan)
            again = {id(item) for item in (*retry, *rest)}
            rest = [item for item in batch if id(item) in again]  # in the queue's order
        if rest:
            session_ids = sorted({item.session_id for item in rest})  # sorted: a stable lock order
            plan, rows = await self.db.run_pg(lambda conn: commit_pg.write_locked(conn, rest, session_ids, self.origin))
            self._known.remember(rows)
            self._settle(plan)

    def moved(self, session_id: str, head: int) -> None:
        """Another process committed to `session_id` up to `head` (heard by the watcher)."""
        self._known.moved(session_id, head)

    def _settle(self, plan: Plan) -> None:
        for item, exc in plan.failed:
            fail([item], exc)
        for item in plan.done:
            if item.logged:
                self.hub.published(item.session_id, item.logged)
            if not item.future.done():
                item.future.set_result(item.logged)
        for session_id in plan.woken:
            self.hub.wake(session_id)

    async def aclose(self) -> None:
        """Stop the writer task once everything queued is committed (the batch in flight included)."""
        while (self._queue or self._committing) and self._writer is not None and not self._writer.done():
            await asyncio.sleep(0.001)
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._writer = None

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

    async def load(
        self, session_id: str, conn: AsyncConnection | None = None
    ) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, dict[str, Any]]]:
        """The whole log of a session (seq, wire dict) and its harness records by key, in one read."""
        if conn is None:
            async with self.db.read() as c:
                return await self.load(session_id, c)
        rows = (await conn.execute(_LOG.where(t.events.c.session_id == session_id))).all()
        records = (await conn.execute(_RECORDS.where(t.harness_records.c.session_id == session_id))).all()
        return _parse_log(rows, records)

    @staticmethod
    def load_sqlite(
        conn: sqlite3.Connection, session_id: str
    ) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, dict[str, Any]]]:
        """`load` on a plain sqlite3 connection (inside `Database.run_sqlite_read`)."""
        return _parse_log(
            conn.execute(_SQLITE_LOG, (session_id,)).fetchall(),
            conn.execute(_SQLITE_RECORDS, (session_id,)).fetchall(),
        )

    @staticmethod
    async def load_pg(
        conn: asyncpg.Connection, session_id: str
    ) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, dict[str, Any]]]:
        """`load` on a plain asyncpg connection (inside `Database.run_pg`)."""
        return _parse_log(await conn.fetch(_PG_LOG, session_id), await conn.fetch(_PG_RECORDS, session_id))

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
