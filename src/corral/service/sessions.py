"""Session operations: create (pinning an agent snapshot), update, archive, delete, and sending events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..errors import InvalidRequest
from ..ids import new_id
from ..schemas.agents import resolve_model
from ..schemas.common import apply_metadata_patch
from ..schemas.events import Event, SessionStatusTerminated, SessionUpdated, persist_params
from ..schemas.sessions import AgentWithOverrides, Budget, Session, SessionAgent, SessionCreate, SessionUpdate
from ..store.store import Store
from .agents import _tools, resolve_skills
from .session_resources import BoxSource, resources_at_create
from .vaults import check_session_vaults

__all__ = ["archive_session", "create_session", "delete_session", "send_events", "update_session"]

ACTIVE = ("running", "rescheduling")


async def _agent_snapshot(store: Store, ref: Any) -> SessionAgent:
    if isinstance(ref, str):
        agent = await store.agents.get(ref)
    else:
        agent = await store.agents.get(ref.id, ref.version)
        if ref.version is not None:
            latest = await store.agents.get(ref.id)
            agent = agent.model_copy(update={"archived_at": latest.archived_at})
    if agent.archived_at is not None:
        raise InvalidRequest(f"agent {agent.id} is archived and cannot start sessions", code="agent_archived")
    snapshot = SessionAgent.model_validate(agent.definition().model_dump())
    if isinstance(ref, AgentWithOverrides):
        snapshot = _apply_overrides(snapshot, ref)
    return snapshot


def _apply_overrides(snapshot: SessionAgent, ref: AgentWithOverrides) -> SessionAgent:
    given = ref.model_fields_set
    changes: dict[str, Any] = {}
    if "model" in given:
        if ref.model is None:
            raise InvalidRequest("an agent_with_overrides cannot clear model", code="agent_model_required")
        changes["model"] = resolve_model(ref.model, snapshot.model)
    if "system" in given:
        changes["system"] = ref.system or None
    servers = (ref.mcp_servers or []) if "mcp_servers" in given else snapshot.mcp_servers
    if "mcp_servers" in given:
        changes["mcp_servers"] = servers
    if "tools" in given:
        changes["tools"] = _tools(ref.tools, {s.name for s in servers})
    if "skills" in given:
        changes["skills"] = resolve_skills(ref.skills)
    updated = SessionAgent.model_validate(snapshot.model_copy(update=changes).model_dump())
    if updated.skills and not updated.tools:
        raise InvalidRequest("skills need the read tool: clearing tools while skills are set is not allowed")
    return updated


async def create_session(store: Store, params: SessionCreate, box: BoxSource | None = None) -> Session:
    """`box`: the vault keys, asked for only to encrypt repository resources' tokens."""
    agent = await _agent_snapshot(store, params.agent)
    environment = await store.environments.get(params.environment_id)
    if environment.archived_at is not None:
        raise InvalidRequest(
            f"environment {environment.id} is archived and cannot start sessions", code="environment_archived"
        )
    vault_ids = await check_session_vaults(store, params.vault_ids or [])
    now = datetime.now(UTC)
    initial: list[Event] = []
    for event in params.initial_events or []:
        if event.type == "user.define_outcome":
            raise InvalidRequest("user.define_outcome (outcomes) is not supported yet")
        initial.append(persist_params(event, new_id("event"), now))
    session_id = new_id("session")
    # last of the checks: it stores the repository tokens, which must not outlive a refused create
    resources = await resources_at_create(store, params.resources or [], session_id, box)
    session = Session(
        id=session_id,
        title=params.title,
        status="idle",
        environment_id=environment.id,
        agent=agent,
        metadata=params.metadata or {},
        budget=Budget.model_validate(params.budget.model_dump()) if params.budget else None,
        vault_ids=vault_ids,
        resources=resources,
        created_at=now,
        updated_at=now,
    )
    try:
        return await store.sessions.create(session, initial)
    except BaseException:
        for resource in resources:
            if resource.get("type") == "github_repository":
                await store.session_resources.drop_secret(resource["id"])
        raise


async def update_session(store: Store, session_id: str, params: SessionUpdate) -> Session:
    given = params.model_fields_set
    if "vault_ids" in given:
        raise InvalidRequest("vault_ids cannot be changed after a session is created")
    async with store.events.transaction() as tx:
        current = await store.sessions.get(session_id, tx.conn, for_update=True)
        if current.status == "terminated":
            raise InvalidRequest(f"session {session_id} is terminated and cannot be updated")
        changes: dict[str, Any] = {}
        event: dict[str, Any] = {}
        if "title" in given and params.title != current.title:
            changes["title"] = event["title"] = params.title
        if "metadata" in given and params.metadata is not None:
            try:
                metadata = apply_metadata_patch(current.metadata, params.metadata)
            except ValueError as exc:
                raise InvalidRequest(str(exc), code="invalid_metadata") from exc
            if metadata != current.metadata:
                changes["metadata"] = event["metadata"] = metadata
        if "budget" in given:
            budget = _new_budget(current, params)
            changes["budget"] = budget
            event["budget"] = budget.model_dump(mode="json") if budget else None
        if "agent" in given and params.agent is not None:
            if current.status in ACTIVE:
                raise InvalidRequest("a session's tools can only change while it is idle")
            agent = _update_agent(current.agent, params.agent)
            changes["agent"] = agent
            event["agent"] = agent.model_dump(mode="json")
        if not changes:
            return current
        updated = Session.model_validate(current.model_copy(update=changes).model_dump())
        events = [SessionUpdated(id=new_id("event"), processed_at=datetime.now(UTC), **event)]
        await store.sessions.put(tx, updated, events)
    return await store.sessions.get(session_id)


def _new_budget(current: Session, params: SessionUpdate) -> Budget | None:
    if params.budget is None:
        return None
    if current.budget is None:
        raise InvalidRequest("a budget can only be set when the session is created", code="budget_create_only")
    new = Budget.model_validate(params.budget.model_dump())
    spent = int(current.usage.list_cost.amount)
    if int(new.max_list_cost.amount) <= spent:
        raise InvalidRequest(f"the new budget must exceed what was already spent ({spent})", code="budget_not_raised")
    return new


def _update_agent(agent: SessionAgent, params: Any) -> SessionAgent:
    given = params.model_fields_set
    servers = (params.mcp_servers or []) if "mcp_servers" in given else agent.mcp_servers
    changes: dict[str, Any] = {}
    if "mcp_servers" in given:
        changes["mcp_servers"] = servers
    if "tools" in given or "mcp_servers" in given:
        tools = params.tools if "tools" in given else [t for t in agent.tools if t.type != "mcp_toolset"]
        changes["tools"] = _tools(tools, {s.name for s in servers}) if "tools" in given else tools
    return SessionAgent.model_validate(agent.model_copy(update=changes).model_dump())


async def archive_session(store: Store, session_id: str) -> Session:
    async with store.events.transaction() as tx:
        current = await store.sessions.get(session_id, tx.conn, for_update=True)
        if current.archived_at is not None:
            return current
        if current.status in ACTIVE:
            raise InvalidRequest(f"session {session_id} is {current.status}; interrupt it before archiving")
        now = datetime.now(UTC)
        updated = current.model_copy(update={"archived_at": now})
        events: list[Event] = []
        if current.status != "terminated":
            events.append(SessionStatusTerminated(id=new_id("event"), processed_at=now))
        await store.sessions.put(tx, updated, events)
    return await store.sessions.get(session_id)


async def delete_session(store: Store, session_id: str) -> None:
    current = await store.sessions.get(session_id)
    if current.status in ACTIVE:
        raise InvalidRequest(f"session {session_id} is {current.status}; interrupt it before deleting")
    await store.sessions.delete(session_id)


_REPLIES = {
    "user.tool_confirmation": ("tool_use_id", ("agent.tool_use", "agent.mcp_tool_use")),
    "user.custom_tool_result": ("custom_tool_use_id", ("agent.custom_tool_use",)),
    "user.tool_result": ("tool_use_id", ("agent.tool_use",)),
}


async def send_events(store: Store, session_id: str, events: list[Any]) -> list[Event]:
    """Validate and append client events; returns the persisted copies (queued ones unprocessed)."""
    session = await store.sessions.get(session_id)
    if session.archived_at is not None:
        raise InvalidRequest(f"session {session_id} is archived and takes no more events", code="session_archived")
    if session.status == "terminated":
        raise InvalidRequest(f"session {session_id} is terminated and takes no more events", code="session_terminated")
    _check_system_messages(events)
    await _check_replies(store, session_id, events)
    now = datetime.now(UTC)
    persisted = [persist_params(e, new_id("event"), now) for e in events]
    await store.events.append(session_id, persisted)
    return persisted


def _check_system_messages(events: list[Any]) -> None:
    positions = [i for i, e in enumerate(events) if e.type == "system.message"]
    if not positions:
        return
    if len(positions) > 1:
        raise InvalidRequest("at most one system.message per request")
    index = positions[0]
    if index != len(events) - 1 or index == 0:
        raise InvalidRequest("system.message must be last and follow the event it accompanies")
    if events[index - 1].type not in ("user.message", "user.tool_result", "user.custom_tool_result"):
        raise InvalidRequest("system.message must follow a user.message, user.tool_result or user.custom_tool_result")


async def _check_replies(store: Store, session_id: str, events: list[Any]) -> None:
    targets: dict[str, str] = {}
    for event in events:
        if event.type not in _REPLIES:
            continue
        field, _ = _REPLIES[event.type]
        target = getattr(event, field)
        if target in targets:
            raise InvalidRequest(f"{target} is answered twice in one request")
        targets[target] = event.type
    if not targets:
        return
    answered = await store.events.replies_to(session_id, list(targets))
    for target, reply_type in targets.items():
        field, kinds = _REPLIES[reply_type]
        original = await store.events.find(session_id, target)
        if original is None or original["type"] not in kinds:
            raise InvalidRequest(f"{field} {target} does not name a {' or '.join(kinds)} event of this session")
        if reply_type == "user.tool_confirmation" and original.get("evaluated_permission") != "ask":
            raise InvalidRequest(f"tool use {target} is not waiting for a confirmation")
        if any(
            r["type"] in (reply_type, "agent.tool_result", "agent.mcp_tool_result") for r in answered.get(target, [])
        ):
            raise InvalidRequest(f"tool use {target} has already been answered")
