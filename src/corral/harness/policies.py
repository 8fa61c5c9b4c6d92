"""Permission policies: for each tool call of the model, who runs it and whether it may run now.

always_allow runs at once; always_ask waits for `user.tool_confirmation`; auto allows tools that only
read and asks for the rest (reason `indeterminate`; every MCP tool counts as one that may write). Custom
tools are never policed; calls to tools that are unknown or disabled are refused without evaluation.
MCP tools are known by the names of the current model call's offer (`routes`, see harness/mcp.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..schemas.sessions import SessionAgent
from ..schemas.tools import AGENT_TOOL_NAMES, AgentToolset, CustomTool, MCPToolset
from .mcp import MCPRoute

__all__ = ["Decision", "decide", "model_tools"]

READ_ONLY = frozenset({"read", "glob", "grep", "web_search", "web_fetch"})


@dataclass(frozen=True)
class Decision:
    kind: str  # agent | custom | mcp
    permission: str  # allow | ask | deny
    evaluation: dict[str, Any] | None
    deny_reason: str | None = None
    route: MCPRoute | None = None
    """Server and tool of an MCP call."""


def _toolset(agent: SessionAgent) -> AgentToolset | None:
    return next((t for t in agent.tools if isinstance(t, AgentToolset)), None)


def enabled_agent_tools(agent: SessionAgent) -> list[str]:
    toolset = _toolset(agent)
    if toolset is None:
        return []
    return [name for name in AGENT_TOOL_NAMES if toolset.effective(name)[0]]


def decide(
    agent: SessionAgent, name: str, tool_input: dict[str, Any], routes: Mapping[str, MCPRoute] | None = None
) -> Decision:
    for tool in agent.tools:
        if isinstance(tool, CustomTool) and tool.name == name:
            return Decision("custom", "allow", None)
    route = (routes or {}).get(name)
    if route is not None:
        return _decide_mcp(agent, name, route)
    toolset = _toolset(agent)
    if name not in AGENT_TOOL_NAMES or toolset is None:
        return Decision("agent", "deny", None, f"There is no tool named {name!r}.")
    enabled, policy = toolset.effective(name)
    if not enabled:
        return Decision("agent", "deny", None, f"The {name} tool is not enabled for this agent.")
    return _apply("agent", policy["type"], name in READ_ONLY)


def _decide_mcp(agent: SessionAgent, name: str, route: MCPRoute) -> Decision:
    toolset = next((t for t in agent.tools if isinstance(t, MCPToolset) and t.mcp_server_name == route.server), None)
    enabled, policy = toolset.effective(route.tool) if toolset else (False, {"type": "always_ask"})
    if not enabled:
        return Decision("mcp", "deny", None, f"The {name} tool is not enabled for this agent.", route)
    decision = _apply("mcp", policy["type"], False)
    return Decision(decision.kind, decision.permission, decision.evaluation, route=route)


def _apply(kind: str, policy: str, read_only: bool) -> Decision:
    if policy == "always_allow":
        return Decision(kind, "allow", {"type": "always_allow"})
    if policy == "always_ask":
        return Decision(kind, "ask", {"type": "always_ask"})
    if read_only:
        return Decision(kind, "allow", {"type": "auto", "evaluated_permission": {"type": "allow"}})
    return Decision(
        kind, "ask", {"type": "auto", "evaluated_permission": {"type": "ask", "reason_code": "indeterminate"}}
    )


def model_tools(
    agent: SessionAgent, definitions: dict[str, dict[str, Any]], mcp: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Tool definitions offered to the model: enabled agent-toolset tools, MCP tools, then custom tools."""
    offered = [definitions[name] for name in enabled_agent_tools(agent) if name in definitions]
    offered.extend(mcp)
    for tool in agent.tools:
        if isinstance(tool, CustomTool):
            offered.append(
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.input_schema.model_dump(exclude_none=True),
                }
            )
    return offered
