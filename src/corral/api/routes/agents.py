"""`/v1/agents`: create, retrieve (any version), update (new version), list, archive, versions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...schemas.agents import Agent, AgentCreate, AgentUpdate
from ...service.agents import archive_agent, create_agent, update_agent
from ...store.store import Store
from ..deps import get_store
from ..query import parse_bool, parse_limit, parse_time_ranges
from .pages import PageOut

router = APIRouter(prefix="/v1/agents", tags=["agents"])


@router.post("", response_model=Agent)
async def create(body: AgentCreate, store: Store = Depends(get_store)) -> Agent:
    return await create_agent(store, body)


@router.get("/{agent_id}", response_model=Agent)
async def retrieve(agent_id: str, version: int | None = None, store: Store = Depends(get_store)) -> Agent:
    return await store.agents.get(agent_id, version)


@router.post("/{agent_id}", response_model=Agent)
async def update(agent_id: str, body: AgentUpdate, store: Store = Depends(get_store)) -> Agent:
    return await update_agent(store, agent_id, body)


@router.get("", response_model=PageOut[Agent])
async def list_agents(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    store: Store = Depends(get_store),
) -> PageOut[Agent]:
    result = await store.agents.list(
        limit=parse_limit(limit, 20, 100),
        page=page,
        include_archived=parse_bool(include_archived, "include_archived"),
        created=parse_time_ranges(request, ops=("gte", "lte")),
    )
    return PageOut[Agent](data=result.rows, next_page=result.next_page)


@router.post("/{agent_id}/archive", response_model=Agent)
async def archive(agent_id: str, store: Store = Depends(get_store)) -> Agent:
    return await archive_agent(store, agent_id)


@router.get("/{agent_id}/versions", response_model=PageOut[Agent])
async def versions(
    agent_id: str, limit: int | None = None, page: str | None = None, store: Store = Depends(get_store)
) -> PageOut[Agent]:
    result = await store.agents.versions(agent_id, limit=parse_limit(limit, 20, 100), page=page)
    return PageOut[Agent](data=result.rows, next_page=result.next_page)
