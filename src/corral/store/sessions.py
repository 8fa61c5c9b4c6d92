"""Sessions: the row beside each event log, holding the agent snapshot and the log's derived state."""

from __future__ import annotations

import collections
import json
import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import NotFound
from ..pricing import list_cost_cents, price_for
from ..schemas.common import from_micros, now_micros, to_micros
from ..schemas.events import Event
from ..schemas.sessions import Session, SessionUsage
from . import tables as t
from .db import Database, pg_sql, sqlite_sql
from .derive import SessionState
from .events import EventLog, Tx
from .pages import Cursor, Page, keyset, make_page
from .resources import time_filters

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SessionRepo"]

# Fields of `Session` kept in the JSON body; the rest live in columns.
_BODY_FIELDS = (
    "title", "agent", "resources", "vault_ids", "metadata", "budget", "deployment_id", "outcome_evaluations",
)  # fmt: skip

_COLUMNS = (
    t.sessions.c.id,
    t.sessions.c.created_at,
    t.sessions.c.updated_at,
    t.sessions.c.archived_at,
    t.sessions.c.environment_id,
    t.sessions.c.status,
    t.sessions.c.body,
    t.sessions.c.usage,
)


_SessionRow = collections.namedtuple("_SessionRow", [c.name for c in _COLUMNS])  # type: ignore[misc]
_SESSION = select(*_COLUMNS).where(t.sessions.c.id == bindparam("sid"))
_SQLITE_SESSION = sqlite_sql(_SESSION)[0]
_PG_SESSION = pg_sql(_SESSION)[0]
# The row and the events past a position, in one statement (so they agree): the row's columns repeat
# on each event row, and stand alone (event columns NULL) when there is none.
_SINCE = (
    select(*_COLUMNS, t.events.c.seq, t.events.c.body.label("event_body"))
    .select_from(
        t.sessions.outerjoin(
            t.events, and_(t.events.c.session_id == t.sessions.c.id, t.events.c.seq > bindparam("after"))
        )
    )
    .where(t.sessions.c.id == bindparam("sid"))
    .order_by(t.events.c.seq)
)
_SQLITE_SINCE = sqlite_sql(_SINCE)
_PG_SINCE = pg_sql(_SINCE)


def _to_model(row: Any, prices: dict[str, list[float]] | None = None) -> Session:
    body = json.loads(row.body)
    state = json.loads(row.usage)
    now = now_micros()
    active = state.get("active_micros", 0)
    if state.get("running_since"):
        active += max(0, now - state["running_since"])
    usage = dict(state["usage"])
    usage["active_seconds"] = round(active / 1_000_000, 3)
    price = price_for(body["agent"]["model"]["id"], prices)
    if price is not None:  # list cost is derived from the token counts, in US cents
        usage["list_cost"] = {"amount": str(int(list_cost_cents(usage, price))), "currency": "USD"}
    return Session(
        id=row.id,
        status=row.status,
        environment_id=row.environment_id,
        usage=SessionUsage.model_validate(usage),
        stats={
            "active_seconds": round(active / 1_000_000, 3),
            "duration_seconds": round((now - row.created_at) / 1_000_000, 3),
        },
        created_at=from_micros(row.created_at),
        updated_at=from_micros(row.updated_at),
        archived_at=from_micros(row.archived_at) if row.archived_at else None,
        **{k: body[k] for k in _BODY_FIELDS if k in body},
    )


def _body(session: Session) -> str:
    return json.dumps(session.model_dump(mode="json", include=set(_BODY_FIELDS)), separators=(",", ":"))


class SessionRepo:
    def __init__(self, db: Database, log: EventLog, prices: dict[str, list[float]] | None = None) -> None:
        self.db = db
        self.log = log
        self.prices = prices

    async def create(self, session: Session, initial_events: list[Event]) -> Session:
        """Insert the session and its initial events in one transaction."""
        created = to_micros(session.created_at)
        state = SessionState(status=session.status, needs_work=False, usage=session.usage.model_dump(mode="json"))
        async with self.log.transaction() as tx:
            await tx.conn.execute(
                insert(t.sessions).values(
                    id=session.id,
                    created_at=created,
                    updated_at=created,
                    agent_id=session.agent.id,
                    agent_version=session.agent.version,
                    environment_id=session.environment_id,
                    status=session.status,
                    body=_body(session),
                    usage=json.dumps(state.usage_json()),
                    last_seq=0,
                    needs_work=False,
                )
            )
            if initial_events:
                await tx.append(session.id, initial_events)
        return await self.get(session.id)

    async def snapshot(
        self, session_id: str
    ) -> tuple[Session, list[tuple[int, dict[str, Any]]], dict[str, dict[str, Any]]]:
        """The session, its whole log and its harness records, read in one consistent snapshot.

        The harness reads this when it takes a session up; it goes around SQLAlchemy (one plain
        sqlite3 read transaction on a reader thread, or one asyncpg REPEATABLE READ transaction)."""
        if self.db.is_sqlite:

            def read(conn: sqlite3.Connection) -> tuple[Any, Any]:
                row = conn.execute(_SQLITE_SESSION, (session_id,)).fetchone()
                return row, (EventLog.load_sqlite(conn, session_id) if row is not None else None)

            row, log = await self.db.run_sqlite_read(read)
        else:

            async def read_pg(conn: asyncpg.Connection) -> tuple[Any, Any]:
                row = await conn.fetchrow(_PG_SESSION, session_id)
                return row, (await EventLog.load_pg(conn, session_id) if row is not None else None)

            row, log = await self.db.run_pg(read_pg, readonly=True, snapshot=True)
        if row is None:
            raise NotFound("session", session_id)
        return _to_model(_SessionRow(*row), self.prices), *log

    async def since(self, session_id: str, after: int) -> tuple[Session, list[tuple[int, dict[str, Any]]]]:
        """The session and the events of its log past position `after`, in one statement.

        What a worker that already holds the log up to `after` reads on each step (usually no event)."""
        if self.db.is_sqlite:
            sql, names = _SQLITE_SINCE
            params = {"sid": session_id, "after": after}
            rows = await self.db.run_sqlite_read(
                lambda conn: conn.execute(sql, tuple(params[n] for n in names)).fetchall()
            )
        else:
            sql, names = _PG_SINCE
            params = {"sid": session_id, "after": after}
            rows = await self.db.run_pg(lambda conn: conn.fetch(sql, *(params[n] for n in names)), transaction=False)
        if not rows:
            raise NotFound("session", session_id)
        width = len(_COLUMNS)
        session = _to_model(_SessionRow(*tuple(rows[0])[:width]), self.prices)
        events = [(row[width], json.loads(row[width + 1])) for row in rows if row[width] is not None]
        return session, events

    async def get(self, session_id: str, conn: AsyncConnection | None = None, *, for_update: bool = False) -> Session:
        """The session; with `for_update` (inside a write transaction), its row stays locked until commit
        on PostgreSQL, so read-modify-write of its body cannot lose a concurrent change."""
        query = select(*_COLUMNS).where(t.sessions.c.id == session_id)
        if for_update:
            query = query.with_for_update()
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.db.read() as c:
                row = (await c.execute(query)).first()
        if row is None:
            raise NotFound("session", session_id)
        return _to_model(row, self.prices)

    async def put(self, tx: Tx, session: Session, events: list[Event]) -> None:
        """Replace the session's body fields and append the events describing the change."""
        await tx.conn.execute(
            update(t.sessions)
            .where(t.sessions.c.id == session.id)
            .values(
                body=_body(session),
                updated_at=tx.now,
                archived_at=to_micros(session.archived_at) if session.archived_at else None,
            )
        )
        if events:
            await tx.append(session.id, events)

    async def delete(self, session_id: str) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(delete(t.sessions).where(t.sessions.c.id == session_id))
            if result.rowcount != 1:
                raise NotFound("session", session_id)
            await conn.execute(delete(t.events).where(t.events.c.session_id == session_id))
            await conn.execute(delete(t.harness_records).where(t.harness_records.c.session_id == session_id))
            await conn.execute(
                delete(t.session_resource_secrets).where(t.session_resource_secrets.c.session_id == session_id)
            )
        self.log.hub.closed(session_id)

    async def list(
        self,
        *,
        limit: int,
        page: str | None,
        order: Literal["asc", "desc"],
        include_archived: bool,
        created: dict[str, datetime | None],
        agent_id: str | None,
        agent_version: int | None,
        statuses: list[str] | None,
        impossible: bool = False,
    ) -> Page:
        cursor = Cursor.decode(page, order) if page else None
        query = select(*_COLUMNS).where(*time_filters(t.sessions, created))
        if not include_archived:
            query = query.where(t.sessions.c.archived_at.is_(None))
        if agent_id is not None:
            query = query.where(t.sessions.c.agent_id == agent_id)
        if agent_version is not None:
            query = query.where(t.sessions.c.agent_version == agent_version)
        if statuses:
            query = query.where(t.sessions.c.status.in_(statuses))
        if impossible:
            query = query.where(t.sessions.c.id.is_(None))
        async with self.db.read() as conn:
            rows = list((await conn.execute(keyset(query, t.sessions, order, cursor, limit))).all())
        result = make_page(rows, order, cursor, limit)
        result.rows = [_to_model(r, self.prices) for r in result.rows]
        return result
