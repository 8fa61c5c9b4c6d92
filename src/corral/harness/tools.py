"""Routing tool calls: the `ToolRunner` seam between the harness and where tools execute."""

from __future__ import annotations

from typing import Any, Protocol

from ..sandbox.base import ToolResult
from ..schemas.sessions import Session

__all__ = ["NoTools", "ToolRunner"]


class ToolRunner(Protocol):
    definitions: dict[str, dict[str, Any]]
    """Messages-API tool definitions of the agent toolset, by name."""

    async def run(self, session: Session, name: str, tool_input: dict[str, Any]) -> ToolResult: ...

    async def interrupt(self, session_id: str) -> None: ...

    async def release(self, session_id: str) -> None:
        """The session went idle: its sandbox may be reclaimed later."""
        ...

    async def aclose(self) -> None: ...


class NoTools:
    """Used when no sandbox backend is configured: every agent-toolset call returns a clear error."""

    definitions: dict[str, dict[str, Any]] = {}

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def run(self, session: Session, name: str, tool_input: dict[str, Any]) -> ToolResult:
        return ToolResult.text(f"The {name} tool cannot run: {self.reason}", is_error=True)

    async def interrupt(self, session_id: str) -> None:
        return None

    async def release(self, session_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None
