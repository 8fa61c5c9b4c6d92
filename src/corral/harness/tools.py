"""Routing tool calls: the `ToolRunner` seam between the harness and where tools execute."""

from __future__ import annotations

from typing import Any, Protocol

from ..sandbox.base import ToolResult
from ..schemas.sessions import Session

__all__ = ["NoTools", "ToolRouter", "ToolRunner"]


class ToolRunner(Protocol):
    definitions: dict[str, dict[str, Any]]
    """Messages-API tool definitions of the agent toolset, by name."""

    async def run(self, session: Session, name: str, tool_input: dict[str, Any]) -> ToolResult: ...

    async def interrupt(self, session_id: str) -> None: ...

    async def prepare(self, session: Session) -> None:
        """A turn of a session that may use these tools starts: get ready in the background (return at once)."""
        ...

    async def release(self, session_id: str) -> None:
        """The session went idle: its sandbox may be reclaimed later."""
        ...

    async def forget(self, session_id: str) -> None:
        """The session was deleted: drop its sandbox and its files."""
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

    async def prepare(self, session: Session) -> None:
        return None

    async def release(self, session_id: str) -> None:
        return None

    async def forget(self, session_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class ToolRouter:
    """Several runners as one: each tool name goes to the first runner that defines it.

    The sandbox runner takes the sandbox tools; `WebTools` (tools/web.py) takes `web_fetch` and
    `web_search`, which run in the worker rather than in a sandbox.
    """

    def __init__(self, runners: list[ToolRunner], fallback: ToolRunner) -> None:
        self.runners = runners
        self.fallback = fallback
        """Answers tools no runner defines (with an error result that says why)."""
        self.definitions: dict[str, dict[str, Any]] = {}
        self._by_name: dict[str, ToolRunner] = {}
        for runner in runners:
            for name, definition in runner.definitions.items():
                if name not in self._by_name:
                    self._by_name[name] = runner
                    self.definitions[name] = definition

    async def run(self, session: Session, name: str, tool_input: dict[str, Any]) -> ToolResult:
        return await self._by_name.get(name, self.fallback).run(session, name, tool_input)

    async def interrupt(self, session_id: str) -> None:
        for runner in self.runners:
            await runner.interrupt(session_id)

    async def prepare(self, session: Session) -> None:
        for runner in self.runners:
            prepare = getattr(runner, "prepare", None)
            if prepare is not None:
                await prepare(session)

    async def release(self, session_id: str) -> None:
        for runner in self.runners:
            await runner.release(session_id)

    async def forget(self, session_id: str) -> None:
        for runner in self.runners:
            await runner.forget(session_id)

    async def aclose(self) -> None:
        for runner in self.runners:
            await runner.aclose()
