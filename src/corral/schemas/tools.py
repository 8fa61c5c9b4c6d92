"""Tool configurations on an agent: the agent toolset, MCP toolsets and custom tools (request and resolved forms)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .common import AllowPolicy, AskPolicy, Policy, Request, Response

__all__ = [
    "AGENT_TOOL_NAMES",
    "AgentToolset",
    "AgentToolsetParams",
    "CustomTool",
    "CustomToolParams",
    "MCPToolset",
    "MCPToolsetParams",
    "Tool",
    "ToolParams",
    "resolve_tools",
]

AgentToolName = Literal["bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search"]
AGENT_TOOL_NAMES: tuple[str, ...] = (
    "bash",
    "read",
    "write",
    "edit",
    "glob",
    "grep",
    "web_fetch",
    "web_search",
)
MAX_TOOLS = 256


# ---- request forms -------------------------------------------------------------------------------


class DefaultConfigParams(Request):
    enabled: bool | None = None
    permission_policy: Policy | None = None


class UserLocation(Response):
    type: Literal["approximate"] = "approximate"
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class AgentToolConfigParams(Request):
    name: AgentToolName
    type: AgentToolName | None = None
    enabled: bool | None = None
    permission_policy: Policy | None = None
    # web_fetch / web_search extras
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    max_content_tokens: int | None = None
    url_sources: dict[str, Any] | None = None
    user_location: UserLocation | None = None

    @model_validator(mode="after")
    def _check(self) -> AgentToolConfigParams:
        if self.type is not None and self.type != self.name:
            raise ValueError(f"configs entry type {self.type!r} must equal its name {self.name!r}")
        web_only = (
            "allowed_domains",
            "blocked_domains",
            "max_content_tokens",
            "url_sources",
            "user_location",
        )
        if self.name not in ("web_fetch", "web_search"):
            for extra in web_only:
                if getattr(self, extra) is not None:
                    raise ValueError(f"{extra} is not a setting of the {self.name} tool")
        if self.allowed_domains is not None and self.blocked_domains is not None:
            raise ValueError("allowed_domains and blocked_domains are mutually exclusive")
        for domains in (self.allowed_domains, self.blocked_domains):
            if domains is not None and not 1 <= len(domains) <= 64:
                raise ValueError("a domain list must hold 1 to 64 entries")
        if self.name != "web_fetch" and (self.url_sources is not None or self.max_content_tokens is not None):
            raise ValueError("url_sources and max_content_tokens apply to web_fetch only")
        if self.name != "web_search" and self.user_location is not None:
            raise ValueError("user_location applies to web_search only")
        return self


class AgentToolsetParams(Request):
    type: Literal["agent_toolset_20260401"]
    configs: list[AgentToolConfigParams] | None = None
    default_config: DefaultConfigParams | None = None

    @field_validator("configs")
    @classmethod
    def _unique(cls, configs: list[AgentToolConfigParams] | None) -> list[AgentToolConfigParams] | None:
        names = [c.name for c in configs or []]
        if len(names) != len(set(names)):
            raise ValueError("each tool may appear at most once in configs")
        return configs


class MCPToolConfigParams(Request):
    name: str = Field(min_length=1, max_length=128)
    enabled: bool | None = None
    permission_policy: Policy | None = None


class MCPToolsetParams(Request):
    type: Literal["mcp_toolset"]
    mcp_server_name: str = Field(min_length=1, max_length=255)
    configs: list[MCPToolConfigParams] | None = None
    default_config: DefaultConfigParams | None = None


class CustomToolInputSchema(Response):
    model_config = Response.model_config | {"extra": "allow"}
    type: Literal["object"] = "object"
    properties: dict[str, Any] | None = None
    required: list[str] | None = None


_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class CustomToolParams(Request):
    type: Literal["custom"]
    name: str
    description: str = Field(min_length=1)
    input_schema: CustomToolInputSchema

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _TOOL_NAME.match(name):
            raise ValueError("custom tool names are 1-128 letters, digits, underscores or hyphens")
        return name


ToolParams = Annotated[AgentToolsetParams | MCPToolsetParams | CustomToolParams, Field(discriminator="type")]


# ---- resolved forms (responses) ------------------------------------------------------------------


class DefaultConfig(Response):
    enabled: bool
    permission_policy: Policy


class AgentToolConfig(Response):
    name: AgentToolName
    type: AgentToolName
    enabled: bool
    permission_policy: Policy


class WebFetchToolConfig(AgentToolConfig):
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    max_content_tokens: int | None = None
    url_sources: dict[str, Any] | None = None


class WebSearchToolConfig(AgentToolConfig):
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    user_location: UserLocation | None = None


class AgentToolset(Response):
    type: Literal["agent_toolset_20260401"] = "agent_toolset_20260401"
    default_config: DefaultConfig
    configs: list[AgentToolConfig | WebFetchToolConfig | WebSearchToolConfig]

    def effective(self, name: str) -> tuple[bool, dict[str, Any]]:
        """(enabled, policy) of one tool: its own config, else the toolset default."""
        for config in self.configs:
            if config.name == name:
                return config.enabled, config.permission_policy.model_dump()
        return self.default_config.enabled, self.default_config.permission_policy.model_dump()


class MCPToolConfig(Response):
    name: str
    enabled: bool
    permission_policy: Policy


class MCPToolset(Response):
    type: Literal["mcp_toolset"] = "mcp_toolset"
    mcp_server_name: str
    default_config: DefaultConfig
    configs: list[MCPToolConfig]

    def effective(self, name: str) -> tuple[bool, dict[str, Any]]:
        """(enabled, policy) of one of the server's tools: its own config, else the toolset default."""
        for config in self.configs:
            if config.name == name:
                return config.enabled, config.permission_policy.model_dump()
        return self.default_config.enabled, self.default_config.permission_policy.model_dump()


class CustomTool(Response):
    type: Literal["custom"] = "custom"
    name: str
    description: str
    input_schema: CustomToolInputSchema


Tool = Annotated[AgentToolset | MCPToolset | CustomTool, Field(discriminator="type")]


def _resolve_toolset(params: AgentToolsetParams) -> AgentToolset:
    default = params.default_config or DefaultConfigParams()
    default_enabled = True if default.enabled is None else default.enabled
    default_policy = default.permission_policy or AllowPolicy()
    configs: list[AgentToolConfig | WebFetchToolConfig | WebSearchToolConfig] = []
    for c in params.configs or []:
        common: dict[str, Any] = {
            "name": c.name,
            "type": c.name,
            "enabled": default_enabled if c.enabled is None else c.enabled,
            "permission_policy": c.permission_policy or default_policy,
        }
        if c.name == "web_fetch":
            configs.append(
                WebFetchToolConfig(
                    **common,
                    allowed_domains=c.allowed_domains,
                    blocked_domains=c.blocked_domains,
                    max_content_tokens=c.max_content_tokens,
                    url_sources=c.url_sources,
                )
            )
        elif c.name == "web_search":
            configs.append(
                WebSearchToolConfig(
                    **common,
                    allowed_domains=c.allowed_domains,
                    blocked_domains=c.blocked_domains,
                    user_location=c.user_location,
                )
            )
        else:
            configs.append(AgentToolConfig(**common))
    return AgentToolset(
        default_config=DefaultConfig(enabled=default_enabled, permission_policy=default_policy),
        configs=configs,
    )


def _resolve_mcp(params: MCPToolsetParams) -> MCPToolset:
    default = params.default_config or DefaultConfigParams()
    enabled = True if default.enabled is None else default.enabled
    policy = default.permission_policy or AskPolicy()  # MCP tools ask by default
    return MCPToolset(
        mcp_server_name=params.mcp_server_name,
        default_config=DefaultConfig(enabled=enabled, permission_policy=policy),
        configs=[
            MCPToolConfig(
                name=c.name,
                enabled=enabled if c.enabled is None else c.enabled,
                permission_policy=c.permission_policy or policy,
            )
            for c in params.configs or []
        ],
    )


def resolve_tools(tools: list[Any], mcp_server_names: set[str]) -> list[AgentToolset | MCPToolset | CustomTool]:
    """Validate a `tools` array against the agent's MCP servers and return the resolved (stored) form."""
    resolved: list[AgentToolset | MCPToolset | CustomTool] = []
    seen_kinds: set[str] = set()
    names: set[str] = set()
    for tool in tools:
        if isinstance(tool, AgentToolsetParams):
            if "toolset" in seen_kinds:
                raise ValueError("tools may contain at most one agent_toolset_20260401")
            seen_kinds.add("toolset")
            resolved.append(_resolve_toolset(tool))
        elif isinstance(tool, MCPToolsetParams):
            if tool.mcp_server_name not in mcp_server_names:
                raise ValueError(f"mcp_toolset refers to unknown MCP server {tool.mcp_server_name!r}")
            if tool.mcp_server_name in names:
                raise ValueError(f"MCP server {tool.mcp_server_name!r} has more than one mcp_toolset")
            names.add(tool.mcp_server_name)
            resolved.append(_resolve_mcp(tool))
        else:
            if tool.name in AGENT_TOOL_NAMES or f"custom:{tool.name}" in names:
                raise ValueError(f"custom tool name {tool.name!r} is already in use")
            names.add(f"custom:{tool.name}")
            resolved.append(CustomTool(name=tool.name, description=tool.description, input_schema=tool.input_schema))
    if unused := mcp_server_names - {t.mcp_server_name for t in resolved if isinstance(t, MCPToolset)}:
        raise ValueError(f"MCP servers must be referenced by an mcp_toolset: {', '.join(sorted(unused))}")
    count = sum(1 for t in resolved if not isinstance(t, AgentToolset | MCPToolset)) + sum(
        len(AGENT_TOOL_NAMES) for t in resolved if isinstance(t, AgentToolset)
    )
    if count > MAX_TOOLS:
        raise ValueError(f"at most {MAX_TOOLS} tools across all toolsets")
    return resolved
