"""Leases: which worker may advance which session, until when.

A claim is one conditional UPDATE (`needs_work` and no live lease), so exactly one of any number
of racing workers wins; duplicate wakes are no-ops. On PostgreSQL, `claim_next` picks a candidate
with `FOR UPDATE SKIP LOCKED`, so busy workers never queue behind one another; on SQLite the write
lock (BEGIN IMMEDIATE) serializes claims, which gives the same guarantee.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update

from ..schemas.common import now_micros
from . import tables as t
from .db import Database

__all__ = ["Leases"]


def _claimable(now: int):
    return and_(
        t.sessions.c.needs_work.is_(True),
        or_(t.sessions.c.lease_owner.is_(None), t.sessions.c.lease_until < now),
    )


class Leases:
    def __init__(self, db: Database, seconds: float) -> None:
        self.db = db
        self.micros = int(seconds * 1_000_000)

    async def claim(self, session_id: str, owner: str) -> bool:
        now = now_micros()
        async with self.db.write() as conn:
            result = await conn.execute(
                update(t.sessions)
                .where(t.sessions.c.id == session_id, _claimable(now))
                .values(lease_owner=owner, lease_until=now + self.micros)
            )
        return result.rowcount == 1

    async def claim_next(self, owner: str, exclude: set[str] | None = None) -> str | None:
        """Claim any session with unclaimed work (oldest change first), or None."""
        now = now_micros()
        query = select(t.sessions.c.id).where(_claimable(now)).order_by(t.sessions.c.updated_at).limit(1)
        if exclude:
            query = query.where(t.sessions.c.id.not_in(exclude))
        if not self.db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        async with self.db.write() as conn:
            session_id = (await conn.execute(query)).scalar()
            if session_id is None:
                return None
            result = await conn.execute(
                update(t.sessions)
                .where(t.sessions.c.id == session_id, _claimable(now))
                .values(lease_owner=owner, lease_until=now + self.micros)
            )
        return session_id if result.rowcount == 1 else None

    async def heartbeat(self, session_id: str, owner: str) -> bool:
        """Extend our lease; False means it is gone (expired and taken, or the session deleted)."""
        now = now_micros()
        async with self.db.write() as conn:
            result = await conn.execute(
                update(t.sessions)
                .where(t.sessions.c.id == session_id, t.sessions.c.lease_owner == owner)
                .values(lease_until=now + self.micros)
            )
        return result.rowcount == 1

    async def release(self, session_id: str, owner: str) -> bool:
        """Give the session up; True when it has work again (input arrived as we finished)."""
        async with self.db.write() as conn:
            await conn.execute(
                update(t.sessions)
                .where(t.sessions.c.id == session_id, t.sessions.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )
            pending = (
                await conn.execute(select(t.sessions.c.needs_work).where(t.sessions.c.id == session_id))
            ).scalar()
        return bool(pending)
