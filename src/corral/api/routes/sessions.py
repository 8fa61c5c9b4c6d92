"""`/v1/sessions`: create, retrieve, update, list with filters, archive, delete."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request

from ...errors import InvalidRequest
from ...runtime import Runtime
from ...schemas.sessions import Session, SessionCreate, SessionUpdate
from ...service.session_resources import BoxSource
from ...service.sessions import archive_session, create_session, delete_session, update_session
from ...store.store import Store
from ..deps import get_box_source, get_runtime, get_store
from ..query import parse_bool, parse_limit, parse_time_ranges, query_list
from .pages import Deleted, PageWithPrev

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

STATUSES = ("rescheduling", "running", "idle", "terminated")


@router.post("", response_model=Session)
async def create(
    body: SessionCreate, store: Store = Depends(get_store), box: BoxSource = Depends(get_box_source)
) -> Session:
    return await create_session(store, body, box)


@router.get("/{session_id}", response_model=Session)
async def retrieve(session_id: str, store: Store = Depends(get_store)) -> Session:
    return await store.sessions.get(session_id)


@router.post("/{session_id}", response_model=Session)
async def update(session_id: str, body: SessionUpdate, store: Store = Depends(get_store)) -> Session:
    return await update_session(store, session_id, body)


@router.get("", response_model=PageWithPrev[Session])
async def list_sessions(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    include_archived: str | None = None,
    agent_id: str | None = None,
    agent_version: int | None = None,
    memory_store_id: str | None = None,
    deployment_id: str | None = None,
    store: Store = Depends(get_store),
) -> PageWithPrev[Session]:
    if agent_version is not None and agent_id is None:
        raise InvalidRequest("agent_version needs agent_id")
    statuses = query_list(request, "statuses")
    if bad := [s for s in statuses if s not in STATUSES]:
        raise InvalidRequest(f"unknown status {bad[0]!r}; expected one of {', '.join(STATUSES)}")
    result = await store.sessions.list(
        limit=parse_limit(limit, 20, 100),
        page=page,
        order=order,
        include_archived=parse_bool(include_archived, "include_archived"),
        created=parse_time_ranges(request),
        agent_id=agent_id,
        agent_version=agent_version,
        statuses=statuses or None,
        # corral has no memory stores or deployments yet, so no session can match these filters
        impossible=memory_store_id is not None or deployment_id is not None,
    )
    return PageWithPrev[Session](data=result.rows, next_page=result.next_page, prev_page=result.prev_page)


@router.delete("/{session_id}", response_model=Deleted)
async def delete(
    session_id: str, store: Store = Depends(get_store), runtime: Runtime = Depends(get_runtime)
) -> Deleted:
    await delete_session(store, session_id)
    await runtime.session_deleted(session_id)
    return Deleted(id=session_id, type="session_deleted")


@router.post("/{session_id}/archive", response_model=Session)
async def archive(session_id: str, store: Store = Depends(get_store)) -> Session:
    return await archive_session(store, session_id)
