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
    "paths_overlap",
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


RESERVED_PATHS = (
    "/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin", "/etc", "/proc", "/dev", "/sys", "/run", "/sbx",
    "/opt/corral", "/mnt/session/outputs",
)  # fmt: skip
"""The sandbox's system files and its own mounts: a file resource cannot be placed there."""
NEEDED_DIRECTORIES = ("/workspace", "/tmp", "/mnt/session/uploads", "/mnt/session/outputs", "/opt/corral/recipe")
"""Directories every sandbox has: a file resource cannot take their place (or a parent's)."""


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
    for reserved in RESERVED_PATHS:
        if path == reserved or path.startswith(reserved + "/"):
            raise ValueError(f"must not be {reserved} or inside it (the sandbox's own)")
    for needed in NEEDED_DIRECTORIES:
        if needed.startswith(path + "/") or needed == path:
            raise ValueError(f"must not be {needed} or one of its parents (the sandbox needs that directory)")
    return path


def paths_overlap(a: str, b: str) -> bool:
    """Two mount paths that cannot both be files: equal, or one inside the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
