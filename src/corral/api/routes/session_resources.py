"""`/v1/sessions/{session_id}/resources`: add, list, retrieve, update (a repository's token), delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends

from ...schemas.session_resources import ResourceUpdate, SessionResource
from ...service.session_resources import (
    BoxSource,
    add_resource,
    delete_resource,
    get_resource,
    list_resources,
    update_resource,
)
from ...store.store import Store
from ..deps import get_box_source, get_store
from ..query import parse_limit
from .pages import Deleted, PageOut

router = APIRouter(prefix="/v1/sessions/{session_id}/resources", tags=["sessions"])


@router.post("", response_model=SessionResource)
async def add(
    session_id: str,
    body: dict[str, Any] = Body(...),
    store: Store = Depends(get_store),
    box: BoxSource = Depends(get_box_source),
) -> Any:
    return await add_resource(store, session_id, body, box)


@router.get("", response_model=PageOut[SessionResource])
async def list_session_resources(
    session_id: str, limit: int | None = None, page: str | None = None, store: Store = Depends(get_store)
) -> PageOut[SessionResource]:
    result = await list_resources(
        store, session_id, limit=None if limit is None else parse_limit(limit, 1000, 1000), page=page
    )
    return PageOut[SessionResource](data=result.rows, next_page=result.next_page)


@router.get("/{resource_id}", response_model=SessionResource)
async def retrieve(session_id: str, resource_id: str, store: Store = Depends(get_store)) -> Any:
    return await get_resource(store, session_id, resource_id)


@router.post("/{resource_id}", response_model=SessionResource)
async def update(
    session_id: str,
    resource_id: str,
    body: ResourceUpdate,
    store: Store = Depends(get_store),
    box: BoxSource = Depends(get_box_source),
) -> Any:
    return await update_resource(store, session_id, resource_id, body.authorization_token, box)


@router.delete("/{resource_id}", response_model=Deleted)
async def delete(session_id: str, resource_id: str, store: Store = Depends(get_store)) -> Deleted:
    await delete_resource(store, session_id, resource_id)
    return Deleted(id=resource_id, type="session_resource_deleted")
