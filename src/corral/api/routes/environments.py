"""`/v1/environments`: create, retrieve, update, list, archive, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ...schemas.environments import Environment, EnvironmentCreate, EnvironmentUpdate
from ...service.environments import archive_environment, create_environment, update_environment
from ...store.store import Store
from ..deps import get_store
from ..query import parse_bool, parse_limit
from .pages import Deleted, PageOut

router = APIRouter(prefix="/v1/environments", tags=["environments"])


@router.post("", response_model=Environment)
async def create(body: EnvironmentCreate, store: Store = Depends(get_store)) -> Environment:
    return await create_environment(store, body)


@router.get("/{environment_id}", response_model=Environment)
async def retrieve(environment_id: str, store: Store = Depends(get_store)) -> Environment:
    return await store.environments.get(environment_id)


@router.post("/{environment_id}", response_model=Environment)
async def update(environment_id: str, body: EnvironmentUpdate, store: Store = Depends(get_store)) -> Environment:
    return await update_environment(store, environment_id, body)


@router.get("", response_model=PageOut[Environment])
async def list_environments(
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    store: Store = Depends(get_store),
) -> PageOut[Environment]:
    result = await store.environments.list(
        limit=parse_limit(limit, 20, 100),
        page=page,
        include_archived=parse_bool(include_archived, "include_archived"),
    )
    return PageOut[Environment](data=result.rows, next_page=result.next_page)


@router.delete("/{environment_id}", response_model=Deleted)
async def delete(environment_id: str, store: Store = Depends(get_store)) -> Deleted:
    await store.environments.delete(environment_id)
    return Deleted(id=environment_id, type="environment_deleted")


@router.post("/{environment_id}/archive", response_model=Environment)
async def archive(environment_id: str, store: Store = Depends(get_store)) -> Environment:
    return await archive_environment(store, environment_id)
