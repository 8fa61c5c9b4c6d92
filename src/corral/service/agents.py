"""Agent operations: create, update (a new immutable version), archive."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..errors import Conflict, InvalidRequest
from ..ids import new_id
from ..schemas.agents import (
    Agent,
    AgentCreate,
    AgentUpdate,
    ServiceAccountIdentity,
    Skill,
    SkillParams,
    resolve_model,
)
from ..schemas.common import apply_metadata_patch
from ..schemas.tools import resolve_tools
from ..store.store import Store

__all__ = ["archive_agent", "create_agent", "resolve_skills", "update_agent"]


def resolve_skills(skills: list[SkillParams] | None) -> list[Skill]:
    return [Skill(type=s.type, skill_id=s.skill_id, version=s.version or "latest") for s in skills or []]


def _tools(tools: list[Any] | None, server_names: set[str]) -> list[Any]:
    try:
        return resolve_tools(tools or [], server_names)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def _check_skills_need_read(agent: Agent) -> None:
    if agent.skills and not agent.tools:
        raise InvalidRequest("skills need the read tool: an agent with skills must keep its tools")


async def create_agent(store: Store, params: AgentCreate) -> Agent:
    now = datetime.now(UTC)
    servers = params.mcp_servers or []
    agent = Agent(
        id=new_id("agent"),
        version=1,
        name=params.name,
        description=params.description or None,
        model=resolve_model(params.model),
        system=params.system or None,
        tools=_tools(params.tools, {s.name for s in servers}),
        mcp_servers=servers,
        skills=resolve_skills(params.skills),
        execution_identity=params.execution_identity or ServiceAccountIdentity(),
        metadata=params.metadata or {},
        created_at=now,
        updated_at=now,
    )
    _check_skills_need_read(agent)
    return await store.agents.create(agent)


async def update_agent(store: Store, agent_id: str, params: AgentUpdate) -> Agent:
    current = await store.agents.get(agent_id)
    if current.archived_at is not None:
        raise InvalidRequest(f"agent {agent_id} is archived and cannot be updated", code="agent_archived")
    if params.version is not None and params.version != current.version:
        raise Conflict(
            f"agent {agent_id} is at version {current.version}, not {params.version}", code="version_mismatch"
        )
    given = params.model_fields_set - {"version"}
    changes: dict[str, Any] = {}
    if "name" in given:
        changes["name"] = params.name
    if "model" in given and params.model is not None:
        changes["model"] = resolve_model(params.model, current.model)
    for field in ("description", "system"):
        if field in given:
            changes[field] = getattr(params, field) or None
    if "execution_identity" in given:
        changes["execution_identity"] = params.execution_identity or ServiceAccountIdentity()
    if "skills" in given:
        changes["skills"] = resolve_skills(params.skills)
    servers = params.mcp_servers or [] if "mcp_servers" in given else current.mcp_servers
    if "mcp_servers" in given:
        changes["mcp_servers"] = servers
    if "tools" in given or "mcp_servers" in given:
        tools = params.tools if "tools" in given else None
        if tools is None and "tools" not in given:
            # servers changed, tools kept: re-check the stored tools against the new server list
            kept = [
                t for t in current.tools if t.type != "mcp_toolset" or t.mcp_server_name in {s.name for s in servers}
            ]
            unused = {s.name for s in servers} - {t.mcp_server_name for t in kept if t.type == "mcp_toolset"}
            if unused:
                raise InvalidRequest(f"MCP servers must be referenced by an mcp_toolset: {', '.join(sorted(unused))}")
            changes["tools"] = kept
        else:
            changes["tools"] = _tools(tools, {s.name for s in servers})
    if "metadata" in given and params.metadata is not None:
        try:
            changes["metadata"] = apply_metadata_patch(current.metadata, params.metadata)
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_metadata") from exc
    updated = current.model_copy(update=changes)
    if updated.model_dump() == current.model_dump():
        return current  # nothing changed: no new version
    updated = updated.model_copy(update={"version": current.version + 1, "updated_at": datetime.now(UTC)})
    _check_skills_need_read(updated)
    updated = Agent.model_validate(updated.model_dump())
    return await store.agents.save_version(updated, expected_version=current.version)


async def archive_agent(store: Store, agent_id: str) -> Agent:
    current = await store.agents.get(agent_id)
    if current.archived_at is not None:
        return current
    now = datetime.now(UTC)
    return await store.agents.put_archived(current.model_copy(update={"archived_at": now, "updated_at": now}))
