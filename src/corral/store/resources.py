"""Agents (with immutable versions) and environments: JSON bodies plus the columns lists need."""

from __future__ import annotations

import json
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import Conflict, InvalidRequest, NotFound
from ..schemas.agents import Agent
from ..schemas.common import to_micros
from ..schemas.environments import Environment
from . import tables as t
from .db import Database
from .pages import Cursor, Page, keyset, make_page

__all__ = ["AgentRepo", "EnvironmentRepo", "dump", "time_filters"]


def dump(model: Any) -> str:
    return json.dumps(model.model_dump(mode="json"), separators=(",", ":"))


def time_filters(table: Any, ranges: dict[str, Any]) -> list[Any]:
    """`created_at[gt|gte|lt|lte]` filters, given as datetimes."""
    column = table.c.created_at
    ops = {"gt": column.__gt__, "gte": column.__ge__, "lt": column.__lt__, "lte": column.__le__}
    return [ops[op](to_micros(value)) for op, value in ranges.items() if value is not None]


class AgentRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, agent: Agent) -> Agent:
        body = dump(agent)
        created = to_micros(agent.created_at)
        async with self.db.write() as conn:
            await conn.execute(
                insert(t.agents).values(
                    id=agent.id, version=agent.version, created_at=created, updated_at=created, body=body
                )
            )
            await conn.execute(
                insert(t.agent_versions).values(agent_id=agent.id, version=agent.version, created_at=created, body=body)
            )
        return agent

    async def get(self, agent_id: str, version: int | None = None, conn: AsyncConnection | None = None) -> Agent:
        async with self.db.read() if conn is None else _same(conn) as c:
            if version is None:
                row = (await c.execute(select(t.agents.c.body).where(t.agents.c.id == agent_id))).first()
            else:
                row = (
                    await c.execute(
                        select(t.agent_versions.c.body).where(
                            t.agent_versions.c.agent_id == agent_id, t.agent_versions.c.version == version
                        )
                    )
                ).first()
                if row is None and await self._exists(c, agent_id):
                    raise NotFound("agent version", f"{agent_id} v{version}")
        if row is None:
            raise NotFound("agent", agent_id)
        return Agent.model_validate_json(row.body)

    async def _exists(self, conn: AsyncConnection, agent_id: str) -> bool:
        return (await conn.execute(select(t.agents.c.id).where(t.agents.c.id == agent_id))).first() is not None

    async def save_version(self, agent: Agent, expected_version: int) -> Agent:
        """Store `agent` as the next version; fails if someone else saved one since we read."""
        body = dump(agent)
        async with self.db.write() as conn:
            result = await conn.execute(
                update(t.agents)
                .where(t.agents.c.id == agent.id, t.agents.c.version == expected_version)
                .values(version=agent.version, updated_at=to_micros(agent.updated_at), body=body)
            )
            if result.rowcount != 1:
                raise Conflict(f"agent {agent.id} was modified concurrently; retry the update", code="version_mismatch")
            await conn.execute(
                insert(t.agent_versions).values(
                    agent_id=agent.id,
                    version=agent.version,
                    created_at=to_micros(agent.updated_at),
                    body=body,
                )
            )
        return agent

    async def put_archived(self, agent: Agent) -> Agent:
        """Archiving changes the current row only: versions stay as they were."""
        async with self.db.write() as conn:
            await conn.execute(
                update(t.agents)
                .where(t.agents.c.id == agent.id)
                .values(
                    archived_at=to_micros(agent.archived_at),
                    updated_at=to_micros(agent.updated_at),
                    body=dump(agent),
                )
            )
        return agent

    async def list(self, *, limit: int, page: str | None, include_archived: bool, created: dict[str, Any]) -> Page:
        cursor = Cursor.decode(page, "desc") if page else None
        query = select(t.agents.c.id, t.agents.c.created_at, t.agents.c.body).where(*time_filters(t.agents, created))
        if not include_archived:
            query = query.where(t.agents.c.archived_at.is_(None))
        async with self.db.read() as conn:
            rows = list((await conn.execute(keyset(query, t.agents, "desc", cursor, limit))).all())
        result = make_page(rows, "desc", cursor, limit)
        result.rows = [Agent.model_validate_json(r.body) for r in result.rows]
        return result

    async def versions(self, agent_id: str, *, limit: int, page: str | None) -> Page:
        """Newest version first. The cursor's `created_at` slot holds the version number."""
        async with self.db.read() as conn:
            if not await self._exists(conn, agent_id):
                raise NotFound("agent", agent_id)
            cursor = Cursor.decode(page, "desc") if page else None
            query = select(t.agent_versions.c.version, t.agent_versions.c.body).where(
                t.agent_versions.c.agent_id == agent_id
            )
            if cursor is not None:
                query = query.where(t.agent_versions.c.version < cursor.created_at)
            rows = list((await conn.execute(query.order_by(t.agent_versions.c.version.desc()).limit(limit + 1))).all())
        more = len(rows) > limit
        rows = rows[:limit]
        next_page = Cursor(rows[-1].version, agent_id, "desc").encode() if more else None
        return Page(rows=[Agent.model_validate_json(r.body) for r in rows], next_page=next_page)


class EnvironmentRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, env: Environment) -> Environment:
        created = to_micros(env.created_at)
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    insert(t.environments).values(
                        id=env.id, name=env.name, created_at=created, updated_at=created, body=dump(env)
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"an environment named {env.name!r} already exists", code="environment_name_taken") from exc
        return env

    async def get(self, env_id: str) -> Environment:
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.environments.c.body).where(t.environments.c.id == env_id))).first()
        if row is None:
            raise NotFound("environment", env_id, code="environment_not_found")
        return Environment.model_validate_json(row.body)

    async def put(self, env: Environment) -> Environment:
        try:
            async with self.db.write() as conn:
                result = await conn.execute(
                    update(t.environments)
                    .where(t.environments.c.id == env.id)
                    .values(
                        name=env.name,
                        updated_at=to_micros(env.updated_at),
                        archived_at=to_micros(env.archived_at) if env.archived_at else None,
                        body=dump(env),
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"an environment named {env.name!r} already exists", code="environment_name_taken") from exc
        if result.rowcount != 1:
            raise NotFound("environment", env.id, code="environment_not_found")
        return env

    async def delete(self, env_id: str) -> None:
        async with self.db.write() as conn:
            in_use = (
                await conn.execute(
                    select(func.count())
                    .select_from(t.sessions)
                    .where(
                        t.sessions.c.environment_id == env_id,
                        t.sessions.c.status.in_(("running", "rescheduling")),
                    )
                )
            ).scalar_one()
            if in_use:
                raise InvalidRequest(f"environment {env_id} has {in_use} running session(s); stop them first")
            result = await conn.execute(t.environments.delete().where(t.environments.c.id == env_id))
        if result.rowcount != 1:
            raise NotFound("environment", env_id, code="environment_not_found")

    async def list(self, *, limit: int, page: str | None, include_archived: bool) -> Page:
        order: Literal["desc"] = "desc"
        cursor = Cursor.decode(page, order) if page else None
        query = select(t.environments.c.id, t.environments.c.created_at, t.environments.c.body)
        if not include_archived:
            query = query.where(t.environments.c.archived_at.is_(None))
        async with self.db.read() as conn:
            rows = list((await conn.execute(keyset(query, t.environments, order, cursor, limit))).all())
        result = make_page(rows, order, cursor, limit)
        result.rows = [Environment.model_validate_json(r.body) for r in result.rows]
        return result


class _same:
    """Use a connection we were given as if we had opened it."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def __aenter__(self) -> AsyncConnection:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        return None
