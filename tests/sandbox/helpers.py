"""Assertion helpers shared by the sandbox tests."""

from __future__ import annotations

from typing import Any

from corral.sandbox.base import Sandbox, ToolResult
from corral.sandbox.gvisor import GvisorSandbox
from corral.sandbox.local import BwrapSandbox


def text(result: ToolResult) -> str:
    assert len(result.content) == 1 and result.content[0]["type"] == "text", result.content
    return str(result.content[0]["text"])


async def ok(sandbox: Sandbox, name: str, input: dict[str, Any], **kw: Any) -> str:
    """Run a call that must succeed; return its text."""
    result = await sandbox.execute(name, input, **kw)
    assert not result.is_error, result.content
    return text(result)


async def err(sandbox: Sandbox, name: str, input: dict[str, Any], **kw: Any) -> str:
    """Run a call that must fail at tool level; return its error text."""
    result = await sandbox.execute(name, input, **kw)
    assert result.is_error, result.content
    return text(result)


ISOLATED = (BwrapSandbox, GvisorSandbox)
"""The isolating backends' sandbox classes (both have `host_uid`, `cgroup`, `egress`, `_proc`)."""


def inside_uid(sandbox: Sandbox) -> int:
    """The agent's uid inside: 1000 under bubblewrap; under gVisor the sandbox's own host uid (root server)."""
    if isinstance(sandbox, GvisorSandbox):
        return sandbox.host_uid if sandbox.host_uid is not None else 0
    return 1000
