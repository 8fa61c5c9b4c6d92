"""Session resources: what a session's container gets besides its environment (`sesrsc_…` ids).

`file` resources (a file uploaded through `/v1/files`, at a mount path) and `github_repository` resources
(a git repository over HTTPS, cloned into the sandbox; any git host) are supported; they are stored in
the session's `resources` list. A repository's `authorization_token` is write-only: it is kept encrypted
apart from the session (`store/session_resources.py`) and never returned.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from .common import Request, Response, Timestamp

__all__ = [
    "MAX_FILE_RESOURCES",
    "REPOSITORY_ROOT",
    "BranchCheckout",
    "CommitCheckout",
    "FileResource",
    "FileResourceParams",
    "GitHubRepositoryResource",
    "GitHubRepositoryResourceParams",
    "ResourceUpdate",
    "SessionResource",
    "default_mount_path",
    "default_repository_path",
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
    authorization_token: SecretStr = Field(min_length=1, max_length=4096)


REPOSITORY_ROOT = "/workspace"
"""Repositories are cloned under the sandbox's persistent working directory (the rest is read-only)."""
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+@-]{1,255}(?<![./])$")


class BranchCheckout(Response):
    type: Literal["branch"] = "branch"
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _BRANCH.match(value) or value.endswith(".lock"):
            raise ValueError("must be a valid git branch name")
        return value


class CommitCheckout(Response):
    type: Literal["commit"] = "commit"
    sha: str

    @field_validator("sha")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not _SHA.match(value):
            raise ValueError("must be a hexadecimal commit SHA")
        return value.lower()


Checkout = Annotated[BranchCheckout | CommitCheckout, Field(discriminator="type")]


class GitHubRepositoryResourceParams(Request):
    """A `github_repository` entry of `resources` at create, or the body of an add."""

    type: Literal["github_repository"]
    url: str = Field(min_length=1, max_length=2048)
    authorization_token: SecretStr | None = Field(default=None, max_length=4096)
    checkout: Checkout | None = None
    mount_path: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL of a git repository")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials: give the token as authorization_token")
        if parts.query or parts.fragment or not parts.path.strip("/"):
            raise ValueError("must be the repository's URL (https://host/owner/repo), without query or fragment")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
            raise ValueError("must not contain spaces or control characters")
        return value

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = validate_mount_path(value)
        if not value.startswith(REPOSITORY_ROOT + "/"):
            raise ValueError(f"must be below {REPOSITORY_ROOT}/ (repositories are cloned into the working directory)")
        return value


class GitHubRepositoryResource(Response):
    type: Literal["github_repository"] = "github_repository"
    id: str
    url: str
    mount_path: str
    checkout: Checkout | None = None
    created_at: Timestamp
    updated_at: Timestamp


def default_repository_path(url: str) -> str:
    """`/workspace/<repo-name>`: the URL's last path segment without `.git`."""
    name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    name = name[:-4] if name.endswith(".git") else name
    return f"{REPOSITORY_ROOT}/{name or 'repository'}"


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


SessionResource = Annotated[FileResource | GitHubRepositoryResource, Field(discriminator="type")]
