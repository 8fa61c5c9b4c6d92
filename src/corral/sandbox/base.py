"""The `Sandbox` seam: an isolated, disposable place where one session's tool calls run.

A sandbox is cattle: the harness holds nothing about it that it cannot rebuild from the session's
environment. If it dies, the call in flight gets an error result and the next call gets a fresh one
from the same recipe; the session's working directory lives outside the sandbox and survives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from corral.sandbox.credentials import CredentialBroker

__all__ = [
    "FileMount",
    "Mount",
    "RecipeFailed",
    "Sandbox",
    "SandboxDied",
    "SandboxSpec",
    "SandboxUnavailable",
    "ToolResult",
]


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced: Managed Agents content blocks (text/image/document) and an error flag."""

    content: list[dict[str, Any]]
    is_error: bool = False
    errors: tuple[dict[str, Any], ...] = ()
    """`session.error` objects to record before the result (e.g. a repository that could not be cloned)."""

    @classmethod
    def text(cls, text: str, *, is_error: bool = False, errors: tuple[dict[str, Any], ...] = ()) -> ToolResult:
        return cls(content=[{"type": "text", "text": text}], is_error=is_error, errors=errors)


@dataclass(frozen=True)
class Mount:
    """A host path bound into a sandbox at `target` (backend-neutral: bubblewrap and gVisor bind the same)."""

    host: str
    target: str
    readonly: bool = True


@dataclass(frozen=True)
class FileMount:
    """A session `file` resource: a read-only copy of file `file_id` at `target` inside the sandbox."""

    resource_id: str
    file_id: str
    target: str


@dataclass(frozen=True)
class SandboxSpec:
    """The recipe for one session's sandbox, derived from its environment config."""

    session_id: str
    workdir: str
    """Host directory holding the session's persistent working directory (mounted at /workspace)."""
    networking: dict[str, Any] = field(default_factory=lambda: {"type": "unrestricted"})
    """The environment's `config.networking` object, applied by the egress proxy (`egress.py`). A `type`
    other than `unrestricted`/`limited` means no network at all (its `reason` says why)."""
    mcp_server_urls: tuple[str, ...] = ()
    """URLs of the agent's MCP servers: their hosts are reachable under `limited` + `allow_mcp_servers`."""
    packages: dict[str, list[str]] = field(default_factory=dict)
    """The environment's `config.packages` lists (apt, pip, npm, ...)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for processes inside (never secrets)."""
    mounts: tuple[Mount, ...] = ()
    """Extra binds the pool adds when it provisions (the recipe's template at /opt/corral/recipe)."""
    files: tuple[FileMount, ...] = ()
    """The session's file resources (see `mounts.py`): under /mnt they follow resource changes live; elsewhere
    they are bound when the sandbox starts. Never part of the recipe: a ready sandbox carries none."""
    credentials: CredentialBroker | None = field(default=None, compare=False, repr=False)
    """The session's credentials, applied by the egress proxy (`credentials.py`); its placeholders are in
    `env`. Sandboxes with credentials are never prewarmed nor shared."""


class SandboxUnavailable(RuntimeError):
    """Isolation cannot be provided on this machine (and the unsafe backend was not chosen)."""


class RecipeFailed(SandboxUnavailable):
    """The environment's `config.packages` cannot be installed (unsupported manager, failed build)."""


class SandboxDied(RuntimeError):
    """The sandbox process went away mid-call (killed, OOM, crashed)."""


@runtime_checkable
class Sandbox(Protocol):
    """One live sandbox. Backends: `local` (bubblewrap), `gvisor`, `unsafe` (explicit opt-in only)."""

    spec: SandboxSpec

    async def execute(self, name: str, input: dict[str, Any], *, timeout: float | None = None) -> ToolResult:
        """Run agent-toolset tool `name` (bash, read, write, edit, glob, grep) with its input.

        Tool-level failures (file not found, non-zero exit, ...) come back as `ToolResult(is_error=True)`;
        `SandboxDied` is raised only when the sandbox itself is gone.
        """
        ...

    async def interrupt(self) -> None:
        """Stop whatever `execute` is running now, promptly (user.interrupt)."""
        ...

    def alive(self) -> bool: ...

    async def set_env(self, env: dict[str, str], timeout: float = 5.0) -> None:
        """Set variables for every shell started from now on (a ready sandbox adopted by a session with
        credentials gets their placeholders this way, before its first call)."""
        ...

    async def close(self) -> None:
        """Kill everything inside and release host resources. Idempotent. The workdir is kept."""
        ...
