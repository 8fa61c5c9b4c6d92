"""Assertion helpers shared by the sandbox tests."""

from __future__ import annotations

from typing import Any

from corral.sandbox.base import Sandbox, ToolResult


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
