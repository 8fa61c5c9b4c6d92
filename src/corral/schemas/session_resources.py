"""Session resources: what a session's container gets besides its environment (`sesrsc_…` ids).

Only `file` resources (a file uploaded through `/v1/files`, at a mount path) are supported; they are
stored in the session's `resources` list.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .common import Request, Response, Timestamp

__all__ = [
    "MAX_FILE_RESOURCES",
    "FileResource",
    "FileResourceParams",
    "ResourceUpdate",
    "default_mount_path",
    "validate_mount_path",
]

MAX_FILE_RESOURCES = 999
RESOURCE_TYPES = ("file", "github_repository", "memory_store")


class FileResourceParams(Request):
    """The body of `POST /v1/sessions/{id}/resources`, and a `file` entry of `resources` at create."""

    type: Literal["file"]
    file_id: str = Field(min_length=1, max_length=64)
    mount_path: str | None = None

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str | None) -> str | None:
        return None if value is None else validate_mount_path(value)


class ResourceUpdate(Request):
    authorization_token: str


class FileResource(Response):
    type: Literal["file"] = "file"
    id: str
    file_id: str
    mount_path: str
    created_at: Timestamp
    updated_at: Timestamp


def default_mount_path(file_id: str) -> str:
    return f"/mnt/session/uploads/{file_id}"


def validate_mount_path(path: str) -> str:
    """An absolute, normalized path in the container: no `.`/`..`/empty segments, no control characters."""
    if not path.startswith("/") or path == "/":
        raise ValueError("must be an absolute path below /")
    if len(path) > 1024:
        raise ValueError("must be at most 1024 characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError("must not contain control characters")
    if any(part in ("", ".", "..") for part in path[1:].split("/")):
        raise ValueError("must be normalized (no empty, `.` or `..` segments, no trailing slash)")
    return path
