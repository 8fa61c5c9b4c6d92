"""Session resources: `file` resources (an uploaded file at a mount path) and `github_repository`
resources (a git repository cloned into the sandbox), added at create or later.

They are stored with the session and returned in its `resources`; mounting and cloning are the sandbox's
business (`sandbox/git.py` clones repositories when a sandbox is provisioned). A repository's
`authorization_token` is encrypted with the vault keys and stored apart (`SessionResourceRepo.put_secret`);
the resource update route replaces it, and the egress proxy reads it for every request to the repository.
`memory_store` resources are refused as not supported yet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr, ValidationError

from ..errors import Conflict, InvalidRequest, NotFound
from ..ids import new_id
from ..schemas.common import to_micros
from ..schemas.session_resources import (
    MAX_FILE_RESOURCES,
    RESOURCE_TYPES,
    FileResource,
    FileResourceParams,
    GitHubRepositoryResource,
    GitHubRepositoryResourceParams,
    default_mount_path,
    default_repository_path,
    paths_overlap,
)
from ..store.pages import Cursor, Page
from ..store.session_resources import SessionState
from ..store.store import Store
from ..vault.crypto import SecretBox
from .files import FileExpired

BoxSource = Callable[[], Awaitable[SecretBox]]
"""The vault keys, asked for only when a repository token must be encrypted."""
Resource = FileResource | GitHubRepositoryResource
Token = tuple[str, str, SecretStr]
"""(resource id, repository url, token) still to be encrypted and stored."""

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
        return InvalidRequest(
            f"{where}: {kind} session resources are not supported yet (only file and github_repository)"
        )
    return InvalidRequest(f"{where}.type: must be one of {', '.join(RESOURCE_TYPES)}")


def _new_repository(params: GitHubRepositoryResourceParams, now: datetime) -> tuple[dict[str, Any], Token | None]:
    resource = GitHubRepositoryResource(
        id=new_id("resource"),
        url=params.url,
        mount_path=params.mount_path or default_repository_path(params.url),
        checkout=params.checkout,
        created_at=now,
        updated_at=now,
    )
    token = (resource.id, resource.url, params.authorization_token) if params.authorization_token else None
    return resource.model_dump(mode="json"), token


async def _new(store: Store, raw: Any, where: str, now: datetime) -> tuple[dict[str, Any], Token | None]:
    params = _params(raw, where)
    if isinstance(params, GitHubRepositoryResourceParams):
        return _new_repository(params, now)
    return await _new_file_resource(store, params, now), None


async def _store_tokens(store: Store, box: BoxSource | None, session_id: str, tokens: list[Token]) -> None:
    if not tokens:
        return
    if box is None:
        raise InvalidRequest("repository authorization tokens cannot be stored here (no secret keys)")
    keys = await box()
    for resource_id, url, token in tokens:
        secret = keys.encrypt({"authorization_token": token.get_secret_value()})
        await store.session_resources.put_secret(session_id, resource_id, url, secret)


def _resource(raw: dict[str, Any]) -> Resource:
    if raw.get("type") == "github_repository":
        return GitHubRepositoryResource.model_validate(raw)
    return FileResource.model_validate(raw)


def _params(raw: Any, where: str) -> FileResourceParams | GitHubRepositoryResourceParams:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("file", "github_repository"):
        raise _unsupported(kind, where)
    model = FileResourceParams if kind == "file" else GitHubRepositoryResourceParams
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            loc = ".".join(str(p) for p in error.get("loc", ()))
            message = "unknown field" if error.get("type") == "extra_forbidden" else error.get("msg", "invalid")
            problems.append(f"{where}.{loc}: {message}" if loc else f"{where}: {message}")
        raise InvalidRequest("; ".join(problems)) from None


async def resources_at_create(
    store: Store, raw: list[Any], session_id: str, box: BoxSource | None = None
) -> list[dict[str, Any]]:
    """Validate `resources` of a session create; stores the repository tokens (before the session, so a
    session never exists without them) and returns the resource objects to store with the session."""
    now = datetime.now(UTC)
    resources: list[dict[str, Any]] = []
    tokens: list[Token] = []
    for i, item in enumerate(raw):
        new, token = await _new(store, item, f"resources[{i}]", now)
        _check_room(resources, new)
        resources.append(new)
        tokens += [token] if token else []
    await _store_tokens(store, box, session_id, tokens)
    return resources


def _check_open(state: SessionState, session_id: str) -> None:
    if state.archived:
        raise InvalidRequest(f"session {session_id} is archived; its resources cannot change", code="session_archived")
    if state.status == "terminated":
        raise InvalidRequest(
            f"session {session_id} is terminated; its resources cannot change", code="session_terminated"
        )


async def add_resource(store: Store, session_id: str, body: Any, box: BoxSource | None = None) -> Resource:
    await store.sessions.get(session_id)  # unknown session: 404 before looking at the file
    new, token = await _new(store, body, "body", datetime.now(UTC))

    def add(state: SessionState, resources: list[dict[str, Any]]) -> None:
        _check_open(state, session_id)
        _check_room(resources, new)
        resources.append(new)

    if token:  # before the resource, so a clone never runs without it
        await _store_tokens(store, box, session_id, [token])
    try:
        await store.session_resources.change(session_id, add)
    except Exception:
        if token:
            await store.session_resources.drop_secret(new["id"])
        raise
    return _resource(new)


async def get_resource(store: Store, session_id: str, resource_id: str) -> Resource:
    session = await store.sessions.get(session_id)
    for resource in session.resources:
        if resource.get("id") == resource_id:
            return _resource(resource)
    raise NotFound("session resource", resource_id)


async def update_resource(
    store: Store, session_id: str, resource_id: str, token: SecretStr, box: BoxSource | None = None
) -> Resource:
    """A new `authorization_token` for a `github_repository` resource; the next git request uses it."""
    resource = await get_resource(store, session_id, resource_id)
    if not isinstance(resource, GitHubRepositoryResource):
        raise InvalidRequest(
            f"resource {resource.id} is a {resource.type} resource; only github_repository resources "
            "support authorization_token rotation"
        )
    now = datetime.now(UTC)
    updated: dict[str, Any] = {}

    def touch(state: SessionState, resources: list[dict[str, Any]]) -> None:
        _check_open(state, session_id)
        for i, raw in enumerate(resources):
            if raw.get("id") == resource_id:
                resources[i] = GitHubRepositoryResource.model_validate({**raw, "updated_at": now}).model_dump(
                    mode="json"
                )
                updated.update(resources[i])
                return
        raise NotFound("session resource", resource_id)

    await _store_tokens(store, box, session_id, [(resource.id, resource.url, token)])
    await store.session_resources.change(session_id, touch)
    return _resource(updated)


async def delete_resource(store: Store, session_id: str, resource_id: str) -> None:
    def delete(state: SessionState, resources: list[dict[str, Any]]) -> None:
        for i, resource in enumerate(resources):
            if resource.get("id") == resource_id:
                del resources[i]
                return
        raise NotFound("session resource", resource_id)

    await store.session_resources.change(session_id, delete)
    await store.session_resources.drop_secret(resource_id)


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
    return Page(rows=[_resource(k[2]) for k in taken], next_page=next_page)
