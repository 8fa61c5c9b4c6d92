"""The event log's group commit on PostgreSQL: one statement writes a whole plan, usually unlocked.

Every write goes through `_WRITE`, one statement of data-modifying CTEs (events, session heads,
harness records, processed marks, notifications). Its head update is conditional: a session's row is
advanced only if it still holds exactly the values the plan was folded from (`last_seq`, `status`,
`needs_work`, `usage`), and, for appends made under a lease, only while that worker holds it; the
other writes of that session go ahead only where its head did. So the statement is safe without a
lock, and it says which sessions it wrote.

Two ways to use it:
- `write_known`: the heads come from `KnownHeads`, what this process itself last committed (the
  harness of a session and the API sending to it usually share a process). One round trip, no
  explicit transaction: the statement commits on its own. Sessions whose row moved meanwhile (another
  process wrote, a lease changed hands) are simply not written and go to the locked path.
- `write_locked`: `BEGIN`, read the heads `FOR UPDATE` (in id order: a stable lock order), write, `COMMIT`.
  The conditions then hold by construction; the lease is checked in Python to tell `LeaseLost`
  from `NotFound`.

A one-step harness append thus costs one round trip instead of four (`BEGIN`, lock, write, `COMMIT`).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from sqlalchemy import ARRAY, String, bindparam, func, select

from . import tables as t
from .commit_plan import HEAD_COLUMNS, Head, HeadRow, Pending, Plan, notices
from .db import pg_sql

if TYPE_CHECKING:
    import asyncpg

__all__ = ["KnownHeads", "write_known", "write_locked"]

_EVENT_FIELDS = ("session_id", "seq", "id", "type", "created_at", "processed_at", "body", "ref")
_RECORD_FIELDS = ("session_id", "key", "kind", "created_at", "body")
_MARK_FIELDS = ("b_session_id", "b_seq", "b_when", "b_queued", "b_stamp")

_LOCK_HEADS = pg_sql(
    select(*HEAD_COLUMNS)
    .where(t.sessions.c.id == func.any(bindparam("ids", type_=ARRAY(String))))
    .order_by(t.sessions.c.id)
    .with_for_update()
)[0]
_WRITE = f"""
WITH heads AS (
    UPDATE {t.sessions.name} AS s
    SET last_seq = h.last_seq, status = h.status, needs_work = h.needs_work, usage = h.usage,
        updated_at = h.updated_at
    FROM unnest($1::varchar[], $2::bigint[], $3::varchar[], $4::boolean[], $5::text[], $6::bigint[],
                $7::bigint[], $8::varchar[], $9::boolean[], $10::text[], $11::varchar[])
         AS h(id, last_seq, status, needs_work, usage, updated_at,
              was_seq, was_status, was_needs_work, was_usage, owner)
    WHERE s.id = h.id AND s.last_seq = h.was_seq AND s.status = h.was_status
          AND s.needs_work = h.was_needs_work AND s.usage = h.was_usage
          AND (h.owner IS NULL OR s.lease_owner = h.owner)
    RETURNING s.id
), new_events AS (
    INSERT INTO {t.events.name} ({", ".join(_EVENT_FIELDS)})
    SELECT * FROM unnest($12::varchar[], $13::bigint[], $14::varchar[], $15::varchar[], $16::bigint[],
                         $17::bigint[], $18::text[], $19::varchar[]) AS e({", ".join(_EVENT_FIELDS)})
    WHERE e.session_id IN (SELECT id FROM heads)
), new_records AS (
    INSERT INTO {t.harness_records.name} ({", ".join(_RECORD_FIELDS)})
    SELECT * FROM unnest($20::varchar[], $21::varchar[], $22::varchar[], $23::bigint[], $24::text[])
         AS r({", ".join(_RECORD_FIELDS)})
    WHERE r.session_id IN (SELECT id FROM heads)
), marks AS (
    UPDATE {t.events.name} AS e
    SET processed_at = m.stamped_at, body = replace(e.body, m.queued, m.stamp)
    FROM unnest($25::varchar[], $26::bigint[], $27::bigint[], $28::text[], $29::text[])
         AS m(session_id, seq, stamped_at, queued, stamp)
    WHERE e.session_id = m.session_id AND e.seq = m.seq AND e.processed_at IS NULL
          AND m.session_id IN (SELECT id FROM heads)
), notified AS (
    SELECT pg_notify(n.channel, n.payload)
    FROM unnest($30::text[], $31::text[], $32::varchar[]) AS n(channel, payload, session_id)
    WHERE n.session_id IN (SELECT id FROM heads)
)
SELECT id FROM heads WHERE (SELECT count(*) FROM notified) >= 0
"""
"""A plan's writes, each session's only where its head still holds what the plan was folded from."""


class KnownHeads:
    """Session heads as this process last committed them, most recent first out of a bounded cache.

    A stale entry costs one wasted round trip (the conditional write skips the session), after which
    the locked path refreshes it; the watcher drops entries that another process is known to have
    moved past."""

    def __init__(self, limit: int = 10_000) -> None:
        self._rows: collections.OrderedDict[str, HeadRow] = collections.OrderedDict()
        self._limit = limit

    def split(self, batch: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        """(appends whose session head is known and which agree on the lease owner, the rest)."""
        owners: dict[str, set[str]] = {}
        for item in batch:
            if item.owner is not None:
                owners.setdefault(item.session_id, set()).add(item.owner)
        known, unknown = [], []
        for item in batch:
            ok = item.session_id in self._rows and len(owners.get(item.session_id, ())) <= 1
            (known if ok else unknown).append(item)
        return known, unknown

    def heads(self, session_ids: set[str]) -> dict[str, HeadRow]:
        return {sid: self._rows[sid] for sid in session_ids if sid in self._rows}

    def remember(self, rows: list[HeadRow]) -> None:
        for row in rows:
            self._rows[row.id] = row
            self._rows.move_to_end(row.id)
        while len(self._rows) > self._limit:
            self._rows.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._rows.pop(session_id, None)

    def moved(self, session_id: str, head: int) -> None:
        """Another process committed up to `head` on this session."""
        row = self._rows.get(session_id)
        if row is not None and row.last_seq < head:
            del self._rows[session_id]


async def write_known(
    conn: asyncpg.Connection, batch: list[Pending], known: dict[str, HeadRow], origin: str
) -> tuple[Plan, list[HeadRow], list[Pending]]:
    """One statement outside a transaction, folded from `known` heads: (what was written, the heads it
    left, the appends to retry on the locked path because their session's row had moved)."""
    plan = Plan.make(batch, {sid: Head.from_row(row) for sid, row in known.items()}, check_owner=False)
    owners = {item.session_id: item.owner for item in plan.done if item.owner is not None}
    written, rows = await _write(conn, plan, known, owners, origin)
    retry = [item for item in plan.done if item.session_id not in written]
    plan.keep(written)
    return plan, rows, retry


async def write_locked(
    conn: asyncpg.Connection, batch: list[Pending], session_ids: list[str], origin: str
) -> tuple[Plan, list[HeadRow]]:
    """Inside `Database.run_pg`'s transaction: lock and read the heads, then write (two round trips)."""
    found = {row[0]: HeadRow(*row) for row in await conn.fetch(_LOCK_HEADS, session_ids)}
    plan = Plan.make(batch, {sid: Head.from_row(row) for sid, row in found.items()})
    written, rows = await _write(conn, plan, found, {}, origin)
    if written != set(plan.heads):  # cannot happen under the row locks: fail loudly, not silently
        raise RuntimeError(f"group commit under lock did not write sessions {sorted(set(plan.heads) - written)}")
    return plan, rows


async def _write(
    conn: asyncpg.Connection, plan: Plan, was: dict[str, HeadRow], owners: dict[str, str], origin: str
) -> tuple[set[str], list[HeadRow]]:
    """Run `_WRITE` for `plan`: (sessions written, their heads as now stored)."""
    if not plan.heads:
        return set(), []
    heads = plan.head_params()
    news = [
        (channel, payload, payload.partition(":")[0])
        for channel, payloads in notices({sid: plan.heads[sid].seq for sid in plan.appended}, plan.woken, origin)
        for payload in payloads
    ]
    columns = [
        [h["b_id"] for h in heads],
        [h["b_last_seq"] for h in heads],
        [h["b_status"] for h in heads],
        [h["b_needs_work"] for h in heads],
        [h["b_usage"] for h in heads],
        [h["b_updated_at"] for h in heads],
        [was[h["b_id"]].last_seq for h in heads],
        [was[h["b_id"]].status for h in heads],
        [bool(was[h["b_id"]].needs_work) for h in heads],
        [was[h["b_id"]].usage for h in heads],
        [owners.get(h["b_id"]) for h in heads],
        *([r[k] for r in plan.rows] for k in _EVENT_FIELDS),
        *([r[k] for r in plan.records] for k in _RECORD_FIELDS),
        *([m[k] for m in plan.marks] for k in _MARK_FIELDS),
        *([n[i] for n in news] for i in range(3)),
    ]
    written = {row[0] for row in await conn.fetch(_WRITE, *columns)}
    rows = [
        HeadRow(h["b_id"], h["b_last_seq"], h["b_status"], h["b_needs_work"], h["b_usage"], None)
        for h in heads
        if h["b_id"] in written
    ]
    return written, rows
