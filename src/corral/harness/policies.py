"""Permission policies: for each tool call of the model, who runs it and whether it may run now.

always_allow runs at once; always_ask waits for `user.tool_confirmation`; auto allows tools that only
read and asks for the rest (reason `indeterminate`). Custom tools are never policed; calls to tools
that are unknown or disabled are refused without evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..schemas.sessions import SessionAgent
from ..schemas.tools import AGENT_TOOL_NAMES, AgentToolset, CustomTool

__all__ = ["Decision", "decide", "model_tools"]

READ_ONLY = frozenset({"read", "glob", "grep", "web_search", "web_fetch"})


@dataclass(frozen=True)
class Decision:
    kind: str  # agent | custom
    permission: str  # allow | ask | deny
    evaluation: dict[str, Any] | None
    deny_reason: str | None = None


def _toolset(agent: SessionAgent) -> AgentToolset | None:
    return next((t for t in agent.tools if isinstance(t, AgentToolset)), None)


def enabled_agent_tools(agent: SessionAgent) -> list[str]:
    toolset = _toolset(agent)
    if toolset is None:
        return []
    return [name for name in AGENT_TOOL_NAMES if toolset.effective(name)[0]]


def decide(agent: SessionAgent, name: str, tool_input: dict[str, Any]) -> Decision:
    for tool in agent.tools:
        if isinstance(tool, CustomTool) and tool.name == name:
            return Decision("custom", "allow", None)
    toolset = _toolset(agent)
    if name not in AGENT_TOOL_NAMES or toolset is None:
        return Decision("agent", "deny", None, f"There is no tool named {name!r}.")
    enabled, policy = toolset.effective(name)
    if not enabled:
        return Decision("agent", "deny", None, f"The {name} tool is not enabled for this agent.")
    kind = policy["type"]
    if kind == "always_allow":
        return Decision("agent", "allow", {"type": "always_allow"})
    if kind == "always_ask":
        return Decision("agent", "ask", {"type": "always_ask"})
    if name in READ_ONLY:
        return Decision("agent", "allow", {"type": "auto", "evaluated_permission": {"type": "allow"}})
    return Decision(
        "agent", "ask", {"type": "auto", "evaluated_permission": {"type": "ask", "reason_code": "indeterminate"}}
    )


def model_tools(agent: SessionAgent, definitions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool definitions offered to the model: enabled agent-toolset tools, then custom tools."""
    offered = [definitions[name] for name in enabled_agent_tools(agent) if name in definitions]
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
