"""Session resources live in the session row's body (`resources`, the wire objects); this changes
that list under the row's write lock (`FOR UPDATE` on PostgreSQL, the write lock on SQLite). Repository
tokens (encrypted) live apart, in `session_resource_secrets`, so no read of a session can return them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update

from ..errors import NotFound
from ..schemas.common import now_micros
from . import tables as t
from .db import Database

__all__ = ["SessionResourceRepo", "SessionState"]

T = TypeVar("T")


@dataclass(frozen=True)
class SessionState:
    status: str
    archived: bool


class SessionResourceRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def change(self, session_id: str, fn: Callable[[SessionState, list[dict[str, Any]]], T]) -> T:
        """Run `fn(state, resources)`, which may edit the list in place or raise; a changed list is stored
        and moves the session's `updated_at`."""
        query = select(t.sessions.c.body, t.sessions.c.status, t.sessions.c.archived_at).where(
            t.sessions.c.id == session_id
        )
        if not self.db.is_sqlite:
            query = query.with_for_update()
        async with self.db.write() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                raise NotFound("session", session_id)
            body = json.loads(row.body)
            resources: list[dict[str, Any]] = list(body.get("resources") or [])
            before = json.dumps(resources)
            result = fn(SessionState(row.status, row.archived_at is not None), resources)
            if json.dumps(resources) != before:
                body["resources"] = resources
                await conn.execute(
                    update(t.sessions)
                    .where(t.sessions.c.id == session_id)
                    .values(body=json.dumps(body, separators=(",", ":")), updated_at=now_micros())
                )
        return result

    async def put_secret(self, session_id: str, resource_id: str, url: str, secret: str) -> None:
        """Store (or replace) a resource's encrypted token."""
        c = t.session_resource_secrets.c
        async with self.db.write() as conn:
            await conn.execute(delete(t.session_resource_secrets).where(c.resource_id == resource_id))
            await conn.execute(
                insert(t.session_resource_secrets).values(
                    resource_id=resource_id, session_id=session_id, url=url, secret=secret, updated_at=now_micros()
                )
            )

    async def drop_secret(self, resource_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                delete(t.session_resource_secrets).where(t.session_resource_secrets.c.resource_id == resource_id)
            )

    async def secrets(self, session_id: str) -> list[tuple[str, str, str]]:
        """(resource id, repository url, encrypted token) of the session's resources that have a token."""
        c = t.session_resource_secrets.c
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(c.resource_id, c.url, c.secret).where(c.session_id == session_id).order_by(c.resource_id)
                )
            ).all()
        return [(r.resource_id, r.url, r.secret) for r in rows]

    # ---- for key rotation (the same shape as CredentialRepo's) ----

    async def secrets_after(self, after: str, limit: int) -> list[tuple[str, str]]:
        c = t.session_resource_secrets.c
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(c.resource_id, c.secret).where(c.resource_id > after).order_by(c.resource_id).limit(limit)
                )
            ).all()
        return [(r.resource_id, r.secret) for r in rows]

    async def secret_of(self, resource_id: str) -> str | None:
        c = t.session_resource_secrets.c
        async with self.db.read() as conn:
            row = (await conn.execute(select(c.secret).where(c.resource_id == resource_id))).first()
        return row.secret if row else None

    async def swap_secret(self, resource_id: str, old: str, new: str) -> bool:
        c = t.session_resource_secrets.c
        async with self.db.write() as conn:
            result = await conn.execute(
                update(t.session_resource_secrets)
                .where(c.resource_id == resource_id, c.secret == old)
                .values(secret=new)
            )
        return result.rowcount == 1
