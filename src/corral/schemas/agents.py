"""Agents: versioned definitions of model, system prompt, tools, MCP servers and skills."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .common import Metadata, MetadataPatch, Request, Response, Timestamp, validate_metadata
from .tools import Tool, ToolParams

__all__ = [
    "Agent",
    "AgentCreate",
    "AgentDefinition",
    "AgentUpdate",
    "ModelConfig",
    "ModelConfigParams",
    "resolve_model",
]

EffortLevel = Literal["low", "medium", "high", "xhigh", "max"]


class Effort(Response):
    type: EffortLevel


class ModelConfigParams(Request):
    id: str = Field(min_length=1)
    effort: EffortLevel | Effort | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None


class ModelConfig(Response):
    id: str
    effort: Effort | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = "standard"


def resolve_model(model: str | ModelConfigParams, previous: ModelConfig | None = None) -> ModelConfig:
    """The stored model object. Effort defaults to `high` for Claude models (none elsewhere) and,
    on update, omitting effort keeps the previous one while omitting inference_geo clears it."""
    params = ModelConfigParams(id=model) if isinstance(model, str) else model
    if params.effort is not None:
        effort: Effort | None = params.effort if isinstance(params.effort, Effort) else Effort(type=params.effort)
    elif previous is not None and previous.id == params.id and previous.effort is not None:
        effort = previous.effort
    else:
        effort = Effort(type="high") if params.id.startswith("claude") else None
    return ModelConfig(
        id=params.id, effort=effort, inference_geo=params.inference_geo, speed=params.speed or "standard"
    )


class MCPServer(Response):
    type: Literal["url"] = "url"
    name: str = Field(min_length=1, max_length=255)
    url: str = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("MCP server url must be http:// or https://")
        return url


class SkillParams(Request):
    type: Literal["anthropic", "custom"]
    skill_id: str = Field(min_length=1)
    version: str | None = None


class Skill(Response):
    type: Literal["anthropic", "custom"]
    skill_id: str
    version: str


class ServiceAccountIdentity(Response):
    type: Literal["service_account"] = "service_account"


class AWSRoleIdentity(Response):
    type: Literal["aws_role"] = "aws_role"
    role_arn: str


ExecutionIdentity = Annotated[ServiceAccountIdentity | AWSRoleIdentity, Field(discriminator="type")]


class _AgentFields(Request):
    """Fields shared by create and update."""

    description: str | None = Field(default=None, max_length=2048)
    execution_identity: ExecutionIdentity | None = None
    mcp_servers: list[MCPServer] | None = Field(default=None, max_length=20)
    multiagent: dict[str, Any] | None = None
    skills: list[SkillParams] | None = Field(default=None, max_length=20)
    system: str | None = Field(default=None, max_length=100_000)
    tools: list[ToolParams] | None = None

    @field_validator("metadata", check_fields=False)
    @classmethod
    def _metadata(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if metadata is None else validate_metadata(metadata)

    @field_validator("multiagent")
    @classmethod
    def _multiagent(cls, multiagent: dict[str, Any] | None) -> None:
        if multiagent is not None:
            raise ValueError("multiagent orchestration is not supported by this server; omit it or send null")
        return None

    @field_validator("mcp_servers")
    @classmethod
    def _unique_servers(cls, servers: list[MCPServer] | None) -> list[MCPServer] | None:
        names = [s.name for s in servers or []]
        if len(names) != len(set(names)):
            raise ValueError("mcp_servers names must be unique")
        return servers


class AgentCreate(_AgentFields):
    name: str = Field(min_length=1, max_length=256)
    model: str | ModelConfigParams
    metadata: Metadata | None = None


class AgentUpdate(_AgentFields):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    model: str | ModelConfigParams | None = None
    metadata: MetadataPatch | None = None
    version: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_clearing(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("name", "model"):
                if key in data and data[key] is None:
                    raise ValueError(f"{key} cannot be cleared")
        return data


class AgentDefinition(Response):
    """The parts of an agent a session snapshots (Agent minus bookkeeping)."""

    id: str
    type: Literal["agent"] = "agent"
    version: int
    name: str
    description: str | None = None
    model: ModelConfig
    system: str | None = None
    tools: list[Tool]
    mcp_servers: list[MCPServer]
    skills: list[Skill]
    execution_identity: ExecutionIdentity
    multiagent: None = None


class Agent(AgentDefinition):
    metadata: Metadata
    created_at: Timestamp
    updated_at: Timestamp
    archived_at: Timestamp | None = None

    def definition(self) -> AgentDefinition:
        return AgentDefinition.model_validate(self.model_dump(include=set(AgentDefinition.model_fields)))
