"""Sessions: one agent (a pinned snapshot) working in one environment, with its event log's derived state."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from .agents import AgentDefinition, MCPServer, ModelConfigParams, SkillParams
from .common import Metadata, MetadataPatch, Request, Response, Timestamp, validate_metadata
from .events import UserMessageParams
from .tools import Tool, ToolParams

__all__ = [
    "Budget",
    "Session",
    "SessionCreate",
    "SessionStatus",
    "SessionUpdate",
    "SessionUsage",
]

SessionStatus = Literal["rescheduling", "running", "idle", "terminated"]


class MonetaryAmount(Response):
    amount: str
    currency: str = "USD"


class Budget(Response):
    type: Literal["limit"] = "limit"
    max_list_cost: MonetaryAmount

    @field_validator("max_list_cost")
    @classmethod
    def _amount(cls, cost: MonetaryAmount) -> MonetaryAmount:
        if not cost.amount.isdigit() or int(cost.amount) <= 0:
            raise ValueError("max_list_cost.amount must be a positive integer string (minor units)")
        return cost


class BudgetParams(Request):
    type: Literal["limit"]
    max_list_cost: MonetaryAmount


class AgentRef(Request):
    type: Literal["agent"]
    id: str
    version: int | None = Field(default=None, ge=1)


class AgentWithOverrides(Request):
    type: Literal["agent_with_overrides"]
    id: str
    version: int | None = Field(default=None, ge=1)
    model: str | ModelConfigParams | None = None
    system: str | None = None
    tools: list[ToolParams] | None = None
    mcp_servers: list[MCPServer] | None = None
    skills: list[SkillParams] | None = None


class DefineOutcomeParams(Request):
    type: Literal["user.define_outcome"]
    description: str
    rubric: dict[str, Any]
    max_iterations: int | None = Field(default=None, ge=1, le=20)


InitialEvent = Annotated[UserMessageParams | DefineOutcomeParams, Field(discriminator="type")]


class SessionCreate(Request):
    agent: str | Annotated[AgentRef | AgentWithOverrides, Field(discriminator="type")]
    environment_id: str
    budget: BudgetParams | None = None
    initial_events: list[InitialEvent] | None = Field(default=None, max_length=50)
    metadata: Metadata | None = None
    resources: list[dict[str, Any]] | None = None
    title: str | None = None
    vault_ids: list[str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        return None if metadata is None else validate_metadata(metadata)


class SessionAgentUpdate(Request):
    tools: list[ToolParams] | None = None
    mcp_servers: list[MCPServer] | None = None


class SessionUpdate(Request):
    agent: SessionAgentUpdate | None = None
    budget: BudgetParams | None = None
    metadata: MetadataPatch | None = None
    title: str | None = None
    vault_ids: list[str] | None = None


class CacheCreation(Response):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class ServerToolUse(Response):
    web_search_requests: int = 0
    web_fetch_requests: int = 0


class SessionUsage(Response):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation: CacheCreation = Field(default_factory=CacheCreation)
    server_tool_use: ServerToolUse = Field(default_factory=ServerToolUse)
    active_seconds: float = 0.0
    list_cost: MonetaryAmount = Field(default_factory=lambda: MonetaryAmount(amount="0"))


class SessionStats(Response):
    active_seconds: float | None = 0.0
    duration_seconds: float | None = 0.0


class SessionAgent(AgentDefinition):
    """The agent snapshot a session runs: fixed at creation (after overrides)."""

    tools: list[Tool]


class Session(Response):
    type: Literal["session"] = "session"
    id: str
    title: str | None = None
    status: SessionStatus
    environment_id: str
    agent: SessionAgent
    resources: list[dict[str, Any]] = Field(default_factory=list)
    vault_ids: list[str] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    budget: Budget | None = None
    deployment_id: str | None = None
    outcome_evaluations: list[dict[str, Any]] = Field(default_factory=list)
    stats: SessionStats = Field(default_factory=SessionStats)
    usage: SessionUsage = Field(default_factory=SessionUsage)
    created_at: Timestamp
    updated_at: Timestamp
    archived_at: Timestamp | None = None
