"""Environment operations: create, update (config merge), archive, delete."""

from __future__ import annotations

from datetime import UTC, datetime

from ..errors import InvalidRequest
from ..ids import new_id
from ..schemas.common import apply_metadata_patch
from ..schemas.environments import (
    ConfigTypeChange,
    Environment,
    EnvironmentCreate,
    EnvironmentUpdate,
    merge_config,
)
from ..store.store import Store

__all__ = ["archive_environment", "create_environment", "update_environment"]


async def create_environment(store: Store, params: EnvironmentCreate) -> Environment:
    now = datetime.now(UTC)
    try:
        config = merge_config(params.config, None)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    env = Environment(
        id=new_id("environment"),
        name=params.name,
        description=params.description,
        config=config,
        metadata=params.metadata or {},
        scope=params.scope or "organization",
        created_at=now,
        updated_at=now,
    )
    return await store.environments.create(env)


async def update_environment(store: Store, env_id: str, params: EnvironmentUpdate) -> Environment:
    current = await store.environments.get(env_id)
    if current.archived_at is not None:
        raise InvalidRequest(f"environment {env_id} is archived", code="environment_archived")
    given = params.model_fields_set
    changes: dict[str, object] = {}
    if "name" in given and params.name is not None:
        changes["name"] = params.name
    if "description" in given:
        changes["description"] = params.description or None
    if "scope" in given and params.scope is not None:
        changes["scope"] = params.scope
    if "config" in given and params.config is not None:
        try:
            changes["config"] = merge_config(params.config, current.config)
        except ConfigTypeChange as exc:
            raise InvalidRequest(str(exc), code="invalid_config_type_change") from exc
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
    if "metadata" in given and params.metadata is not None:
        try:
            changes["metadata"] = apply_metadata_patch(current.metadata, params.metadata, empty_deletes=True)
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_metadata") from exc
    if not changes:
        return current
    changes["updated_at"] = datetime.now(UTC)
    return await store.environments.put(Environment.model_validate(current.model_copy(update=changes).model_dump()))


async def archive_environment(store: Store, env_id: str) -> Environment:
    current = await store.environments.get(env_id)
    if current.archived_at is not None:
        return current
    now = datetime.now(UTC)
    return await store.environments.put(current.model_copy(update={"archived_at": now, "updated_at": now}))
