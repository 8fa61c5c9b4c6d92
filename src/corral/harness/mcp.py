"""The agent's MCP toolsets in the harness: which MCP tools the model is offered, and running a call.

Each server's tool list is fetched once per run (a run lasts from a wake until the session waits) and
kept for the run's later model calls; a server that could not be listed stays failed for the rest of
the run, so its `session.error` is emitted once, and the next run tries again. The model sees each
tool as `mcp__<server>__<tool>` (tools/mcp.py `model_tool_name`); `MCPOffer.routes` maps those names
back to server and tool, and the harness stores the mapping with the model's output, so a call is
routed the same way by any worker that folds the log later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..ids import new_id
from ..sandbox.base import ToolResult
from ..schemas.events import Event, SessionError, error_object
from ..schemas.sessions import Session, SessionAgent
from ..schemas.tools import MCPToolset
from ..tools.mcp import MCPClient, MCPFailure, MCPToolInfo, TokenSource, model_tool_name

__all__ = ["MCPOffer", "MCPRoute", "MCPToolsets", "mcp_error"]

_ERROR_TYPES = {"connection": "mcp_connection_failed_error", "authentication": "mcp_authentication_failed_error"}


@dataclass(frozen=True)
class MCPRoute:
    server: str
    tool: str


@dataclass
class MCPOffer:
    definitions: list[dict[str, Any]] = field(default_factory=list)
    """Messages-API tool definitions, in the order of the agent's servers."""
    routes: dict[str, MCPRoute] = field(default_factory=dict)
    """Model tool name -> server and tool."""
    errors: list[SessionError] = field(default_factory=list)
    """`session.error` events for servers that failed to list in this step (not before in this run)."""


def mcp_error(server: str, failure: MCPFailure) -> SessionError:
    """The `session.error` for a failed MCP server. `retrying`: the session goes on, and the server is
    tried again on the next run."""
    error = error_object(
        _ERROR_TYPES[failure.kind], f"MCP server {server!r}: {failure.message}", "retrying", mcp_server_name=server
    )
    return SessionError(id=new_id("event"), processed_at=datetime.now(UTC), error=error)


def _toolsets(agent: SessionAgent) -> list[tuple[str, str, MCPToolset]]:
    """(name, url, toolset) of each MCP server the agent exposes through an `mcp_toolset`."""
    by_name = {t.mcp_server_name: t for t in agent.tools if isinstance(t, MCPToolset)}
    return [(s.name, s.url, by_name[s.name]) for s in agent.mcp_servers if s.name in by_name]


class MCPToolsets:
    def __init__(self, client: MCPClient, tokens_for: Callable[[Session], TokenSource]) -> None:
        self.client = client
        self.tokens_for = tokens_for
        """A session's credentials (from its vaults) as a `TokenSource`."""
        self._runs: dict[str, dict[tuple[str, str], list[MCPToolInfo] | MCPFailure]] = {}

    async def offer(self, session: Session) -> MCPOffer:
        servers = _toolsets(session.agent)
        offer = MCPOffer()
        if not servers:
            return offer
        known = self._runs.setdefault(session.id, {})
        missing = [(name, url) for name, url, _ in servers if (name, url) not in known]
        if missing:
            tokens = self.tokens_for(session)
            listed = await asyncio.gather(*(self._list(url, tokens) for _, url in missing))
            for (name, url), result in zip(missing, listed, strict=True):
                known[(name, url)] = result
                if isinstance(result, MCPFailure):
                    offer.errors.append(mcp_error(name, result))
        taken: set[str] = set()
        for name, url, toolset in servers:
            tools = known[(name, url)]
            if isinstance(tools, MCPFailure):
                continue
            for tool in tools:
                if not toolset.effective(tool.name)[0]:
                    continue
                exposed = model_tool_name(name, tool.name, taken)
                taken.add(exposed)
                offer.routes[exposed] = MCPRoute(name, tool.name)
                definition: dict[str, Any] = {"name": exposed, "input_schema": tool.input_schema}
                if tool.description:
                    definition["description"] = tool.description
                offer.definitions.append(definition)
        return offer

    async def _list(self, url: str, tokens: TokenSource) -> list[MCPToolInfo] | MCPFailure:
        try:
            return await self.client.list_tools(url, tokens)
        except MCPFailure as failure:
            return failure

    async def call(
        self, session: Session, server: str, tool: str, arguments: dict[str, Any]
    ) -> tuple[ToolResult, list[Event]]:
        """Run one tool: its result, plus a `session.error` if the server failed (the result then says why)."""
        url = next((s.url for s in session.agent.mcp_servers if s.name == server), None)
        if url is None:
            return ToolResult.text(f"The agent no longer has an MCP server named {server!r}.", is_error=True), []
        try:
            result = await self.client.call_tool(url, self.tokens_for(session), tool, arguments)
        except MCPFailure as failure:
            text = f"The call to {tool} on MCP server {server!r} failed: {failure.message}."
            return ToolResult.text(text, is_error=True), [mcp_error(server, failure)]
        return result, []

    def forget(self, session_id: str) -> None:
        """The run ended: the next one lists the servers again (and retries failed ones)."""
        self._runs.pop(session_id, None)
