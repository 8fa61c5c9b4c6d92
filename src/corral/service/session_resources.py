"""Session resources: `file` resources (an uploaded file at a mount path) added at create or later.

They are stored with the session and returned in its `resources`; mounting them into the sandbox is the
sandbox's business. `github_repository` and `memory_store` resources are refused as not supported yet.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..errors import Conflict, InvalidRequest, NotFound
from ..ids import new_id
from ..schemas.common import to_micros
from ..schemas.session_resources import (
    MAX_FILE_RESOURCES,
    RESOURCE_TYPES,
    FileResource,
    FileResourceParams,
    default_mount_path,
    paths_overlap,
)
from ..store.pages import Cursor, Page
from ..store.session_resources import SessionState
from ..store.store import Store
from .files import FileExpired

__all__ = [
    "add_resource",
    "delete_resource",
    "get_resource",
    "list_resources",
    "resources_at_create",
    "update_resource",
]


async def _new_file_resource(store: Store, params: FileResourceParams, now: datetime) -> dict[str, Any]:
    meta = await store.files.get(params.file_id)
    if meta.expires_at is not None and meta.expires_at <= now:
        raise FileExpired(meta.id, meta.expires_at)
    resource = FileResource(
        id=new_id("resource"),
        file_id=meta.id,
        mount_path=params.mount_path or default_mount_path(meta.id),
        created_at=now,
        updated_at=now,
    )
    return resource.model_dump(mode="json")


def _check_room(resources: list[dict[str, Any]], new: dict[str, Any]) -> None:
    if sum(1 for r in resources if r.get("type") == "file") >= MAX_FILE_RESOURCES:
        raise InvalidRequest(f"a session can have at most {MAX_FILE_RESOURCES} file resources")
    for other in resources:
        if other.get("mount_path") == new["mount_path"]:
            raise Conflict(
                f"mount_path {new['mount_path']} is already used by resource {other.get('id')}",
                code="mount_path_taken",
            )
        if other.get("mount_path") and paths_overlap(str(other["mount_path"]), new["mount_path"]):
            raise Conflict(
                f"mount_path {new['mount_path']} and {other['mount_path']} (resource {other.get('id')}) "
                "cannot both be files: one is inside the other",
                code="mount_path_taken",
            )


def _unsupported(kind: Any, where: str) -> InvalidRequest:
    if kind in RESOURCE_TYPES:
        return InvalidRequest(f"{where}: {kind} session resources are not supported yet (only file)")
    return InvalidRequest(f"{where}.type: must be one of {', '.join(RESOURCE_TYPES)}")


def _params(raw: Any, where: str) -> FileResourceParams:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind != "file":
        raise _unsupported(kind, where)
    try:
        return FileResourceParams.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            loc = ".".join(str(p) for p in error.get("loc", ()))
            message = "unknown field" if error.get("type") == "extra_forbidden" else error.get("msg", "invalid")
            problems.append(f"{where}.{loc}: {message}" if loc else f"{where}: {message}")
        raise InvalidRequest("; ".join(problems)) from None


async def resources_at_create(store: Store, raw: list[Any]) -> list[dict[str, Any]]:
    """Validate `resources` of a session create; returns the resource objects to store."""
    now = datetime.now(UTC)
    resources: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        new = await _new_file_resource(store, _params(item, f"resources[{i}]"), now)
        _check_room(resources, new)
        resources.append(new)
    return resources


def _check_open(state: SessionState, session_id: str) -> None:
    if state.archived:
        raise InvalidRequest(f"session {session_id} is archived; its resources cannot change", code="session_archived")
    if state.status == "terminated":
        raise InvalidRequest(
            f"session {session_id} is terminated; its resources cannot change", code="session_terminated"
        )


async def add_resource(store: Store, session_id: str, body: Any) -> FileResource:
    await store.sessions.get(session_id)  # unknown session: 404 before looking at the file
    new = await _new_file_resource(store, _params(body, "body"), datetime.now(UTC))

    def add(state: SessionState, resources: list[dict[str, Any]]) -> None:
        _check_open(state, session_id)
        _check_room(resources, new)
        resources.append(new)

    await store.session_resources.change(session_id, add)
    return FileResource.model_validate(new)


async def get_resource(store: Store, session_id: str, resource_id: str) -> FileResource:
    session = await store.sessions.get(session_id)
    for resource in session.resources:
        if resource.get("id") == resource_id:
            return FileResource.model_validate(resource)
    raise NotFound("session resource", resource_id)


async def update_resource(store: Store, session_id: str, resource_id: str) -> FileResource:
    """Only `github_repository` resources take a new `authorization_token`; corral stores none of those."""
    resource = await get_resource(store, session_id, resource_id)
    raise InvalidRequest(
        f"resource {resource.id} is a {resource.type} resource; only github_repository resources "
        "support authorization_token rotation"
    )


async def delete_resource(store: Store, session_id: str, resource_id: str) -> None:
    def delete(state: SessionState, resources: list[dict[str, Any]]) -> None:
        for i, resource in enumerate(resources):
            if resource.get("id") == resource_id:
                del resources[i]
                return
        raise NotFound("session resource", resource_id)

    await store.session_resources.change(session_id, delete)


async def list_resources(store: Store, session_id: str, *, limit: int | None, page: str | None) -> Page:
    """In the order they were added; all of them when `limit` is omitted."""
    session = await store.sessions.get(session_id)
    keyed = sorted(
        ((to_micros(datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))), r["id"], r))
        for r in session.resources
    )
    if page:
        cursor = Cursor.decode(page, "asc")
        keyed = [k for k in keyed if (k[0], k[1]) > (cursor.created_at, cursor.id)]
    taken = keyed if limit is None else keyed[:limit]
    more = limit is not None and len(keyed) > limit
    next_page = Cursor(taken[-1][0], taken[-1][1], "asc").encode() if more and taken else None
    return Page(rows=[FileResource.model_validate(k[2]) for k in taken], next_page=next_page)
