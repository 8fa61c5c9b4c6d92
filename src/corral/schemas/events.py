"""Session events: the immutable entries of a session's log, as they travel on the wire.

Every event is a frozen model with a `type` discriminator. Client-sent events arrive as `*Params`
(no id, no timestamp); the server persists them as the matching event with an id and `processed_at`
(null while queued). Server events always carry `processed_at`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from .common import Timestamp
from .content import AgentMessageBlock, ResultBlock, TextBlock, UserMessageBlock

__all__ = [
    "EVENT_TYPES",
    "AgentCustomToolUse",
    "AgentMCPToolResult",
    "AgentMCPToolUse",
    "AgentMessage",
    "AgentThinking",
    "AgentThreadContextCompacted",
    "AgentToolResult",
    "AgentToolUse",
    "ClientEventParams",
    "Event",
    "SessionDeleted",
    "SessionError",
    "SessionStatusIdle",
    "SessionStatusRescheduled",
    "SessionStatusRunning",
    "SessionStatusTerminated",
    "SessionUpdated",
    "SpanModelRequestEnd",
    "SpanModelRequestStart",
    "SpanModelUsage",
    "UserCustomToolResult",
    "UserInterrupt",
    "UserMessage",
    "UserToolConfirmation",
    "UserToolResult",
    "error_object",
]


class Event(BaseModel):
    """Base of every persisted event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Server-assigned id, `sevt_…`.")
    processed_at: Timestamp | None = Field(
        default=None, description="When the server processed it; null while a client event is queued."
    )


# ---- client events -------------------------------------------------------------------------------


class UserMessage(Event):
    type: Literal["user.message"] = "user.message"
    content: list[UserMessageBlock] = Field(description="What the user said.")


class UserInterrupt(Event):
    type: Literal["user.interrupt"] = "user.interrupt"
    session_thread_id: str | None = Field(default=None, description="Thread to interrupt; null = all.")


class UserToolConfirmation(Event):
    type: Literal["user.tool_confirmation"] = "user.tool_confirmation"
    tool_use_id: str = Field(description="Id of the `agent.tool_use` / `agent.mcp_tool_use` event answered.")
    result: Literal["allow", "deny"] = Field(description="Whether the tool may run.")
    deny_message: str | None = Field(default=None, description="Told to the model when denied.")
    session_thread_id: str | None = Field(default=None, description="Thread the reply was routed to.")


class UserCustomToolResult(Event):
    type: Literal["user.custom_tool_result"] = "user.custom_tool_result"
    custom_tool_use_id: str = Field(description="Id of the `agent.custom_tool_use` event answered.")
    content: list[ResultBlock] | None = Field(default=None, description="The tool's output.")
    is_error: bool | None = Field(default=None, description="Whether the tool failed.")
    session_thread_id: str | None = Field(default=None, description="Thread the reply was routed to.")


class UserToolResult(Event):
    type: Literal["user.tool_result"] = "user.tool_result"
    tool_use_id: str = Field(description="Id of the `agent.tool_use` event a self-hosted worker ran.")
    content: list[ResultBlock] | None = Field(default=None, description="The tool's output.")
    is_error: bool | None = Field(default=None, description="Whether the tool failed.")
    session_thread_id: str | None = Field(default=None, description="Thread the reply was routed to.")


class SystemMessage(Event):
    type: Literal["system.message"] = "system.message"
    content: list[TextBlock] = Field(description="Operator text appended as a system turn.")


# ---- agent events --------------------------------------------------------------------------------


class AgentMessage(Event):
    type: Literal["agent.message"] = "agent.message"
    content: list[AgentMessageBlock] = Field(description="Text of one model response.")


class AgentThinking(Event):
    type: Literal["agent.thinking"] = "agent.thinking"


class AgentToolUse(Event):
    type: Literal["agent.tool_use"] = "agent.tool_use"
    name: str = Field(description="Agent-toolset tool name.")
    input: dict[str, Any] = Field(description="Tool input as the model wrote it.")
    evaluated_permission: Literal["allow", "ask", "deny"] | None = Field(
        default=None, description="What the permission policy decided."
    )
    evaluation: dict[str, Any] | None = Field(default=None, description="Which policy decided it.")
    session_thread_id: str | None = Field(default=None, description="Thread that made the call.")


class AgentToolResult(Event):
    type: Literal["agent.tool_result"] = "agent.tool_result"
    tool_use_id: str = Field(description="Id of the `agent.tool_use` event.")
    content: list[ResultBlock] | None = Field(default=None, description="The tool's output.")
    is_error: bool | None = Field(default=None, description="Whether the tool failed.")


class AgentCustomToolUse(Event):
    type: Literal["agent.custom_tool_use"] = "agent.custom_tool_use"
    name: str = Field(description="Custom tool name.")
    input: dict[str, Any] = Field(description="Tool input as the model wrote it.")
    session_thread_id: str | None = Field(default=None, description="Thread that made the call.")


class AgentMCPToolUse(Event):
    type: Literal["agent.mcp_tool_use"] = "agent.mcp_tool_use"
    name: str = Field(description="Tool name as the MCP server reports it.")
    mcp_server_name: str = Field(description="Name of the agent's MCP server that has the tool.")
    input: dict[str, Any] = Field(description="Tool input as the model wrote it.")
    evaluated_permission: Literal["allow", "ask", "deny"] | None = Field(
        default=None, description="What the permission policy decided."
    )
    evaluation: dict[str, Any] | None = Field(default=None, description="Which policy decided it.")
    session_thread_id: str | None = Field(default=None, description="Thread that made the call.")


class AgentMCPToolResult(Event):
    type: Literal["agent.mcp_tool_result"] = "agent.mcp_tool_result"
    mcp_tool_use_id: str = Field(description="Id of the `agent.mcp_tool_use` event.")
    content: list[ResultBlock] | None = Field(default=None, description="What the MCP server returned.")
    is_error: bool | None = Field(default=None, description="Whether the call failed.")


class AgentThreadContextCompacted(Event):
    type: Literal["agent.thread_context_compacted"] = "agent.thread_context_compacted"


# ---- session and span events ---------------------------------------------------------------------


class SessionStatusRunning(Event):
    type: Literal["session.status_running"] = "session.status_running"


class SessionStatusIdle(Event):
    type: Literal["session.status_idle"] = "session.status_idle"
    stop_reason: dict[str, Any] = Field(description="Why the session stopped: end_turn, requires_action, …")
    stop_details: dict[str, Any] | None = Field(default=None, description="Refusal details, if any.")


class SessionStatusRescheduled(Event):
    type: Literal["session.status_rescheduled"] = "session.status_rescheduled"


class SessionStatusTerminated(Event):
    type: Literal["session.status_terminated"] = "session.status_terminated"


class SessionError(Event):
    type: Literal["session.error"] = "session.error"
    error: dict[str, Any] = Field(description="`{type, message, retry_status, …}`; see `error_object`.")


class SessionUpdated(Event):
    """Carries only the fields that changed (a field set to null means it was cleared)."""

    type: Literal["session.updated"] = "session.updated"
    agent: dict[str, Any] | None = Field(default=None, description="New agent snapshot, if it changed.")
    budget: dict[str, Any] | None = Field(default=None, description="New budget, if it changed.")
    metadata: dict[str, str] | None = Field(default=None, description="New metadata, if it changed.")
    title: str | None = Field(default=None, description="New title, if it changed.")

    @model_serializer(mode="wrap")
    def _changed_only(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k in ("id", "type", "processed_at") or k in self.model_fields_set}


class SessionDeleted(Event):
    type: Literal["session.deleted"] = "session.deleted"


class SpanModelUsage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class SpanModelRequestStart(Event):
    type: Literal["span.model_request_start"] = "span.model_request_start"


class SpanModelRequestEnd(Event):
    type: Literal["span.model_request_end"] = "span.model_request_end"
    model_request_start_id: str = Field(description="Id of the matching start span.")
    model_usage: SpanModelUsage = Field(description="Tokens this call used.")
    is_error: bool | None = Field(default=False, description="Whether the call failed or was cut off.")


AnyEvent = Annotated[
    UserMessage
    | UserInterrupt
    | UserToolConfirmation
    | UserCustomToolResult
    | UserToolResult
    | SystemMessage
    | AgentMessage
    | AgentThinking
    | AgentToolUse
    | AgentToolResult
    | AgentCustomToolUse
    | AgentMCPToolUse
    | AgentMCPToolResult
    | AgentThreadContextCompacted
    | SessionStatusRunning
    | SessionStatusIdle
    | SessionStatusRescheduled
    | SessionStatusTerminated
    | SessionError
    | SessionUpdated
    | SessionDeleted
    | SpanModelRequestStart
    | SpanModelRequestEnd,
    Field(discriminator="type"),
]

# Every event type of the API (valid in `types[]` filters), including ones corral does not emit yet.
EVENT_TYPES: tuple[str, ...] = (
    "user.message", "user.interrupt", "user.tool_confirmation", "user.custom_tool_result", "user.tool_result",
    "user.define_outcome", "system.message", "agent.custom_tool_use", "agent.message", "agent.thinking",
    "agent.mcp_tool_use", "agent.mcp_tool_result", "agent.tool_use", "agent.tool_result",
    "agent.thread_message_received", "agent.thread_message_sent", "agent.thread_context_compacted",
    "session.error", "session.status_rescheduled", "session.status_running", "session.status_idle",
    "session.status_terminated", "session.thread_created", "session.thread_status_running",
    "session.thread_status_idle", "session.thread_status_terminated", "session.thread_status_rescheduled",
    "session.updated", "session.usage", "session.deleted", "span.outcome_evaluation_start",
    "span.outcome_evaluation_end", "span.outcome_evaluation_ongoing", "span.model_request_start",
    "span.model_request_end", "workflow_run.created", "workflow_run.status_running", "workflow_run.status_idle",
    "workflow_run.status_ended", "workflow_run.error", "workflow_run.phase_started", "workflow_run.phase_ended",
)  # fmt: skip


def error_object(kind: str, message: str, retry: str, **extra: Any) -> dict[str, Any]:
    """The `error` of a `session.error` event; `retry` is retrying | exhausted | terminal."""
    return {"type": kind, "message": message, "retry_status": {"type": retry}, **extra}


# ---- what clients may send -----------------------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserMessageParams(_Params):
    type: Literal["user.message"]
    content: list[UserMessageBlock] = Field(min_length=1)


class UserInterruptParams(_Params):
    type: Literal["user.interrupt"]
    session_thread_id: str | None = None


class UserToolConfirmationParams(_Params):
    type: Literal["user.tool_confirmation"]
    tool_use_id: str
    result: Literal["allow", "deny"]
    deny_message: str | None = None
    session_thread_id: str | None = None  # accepted and ignored; the server routes by tool_use_id

    @model_validator(mode="after")
    def _deny_message(self) -> UserToolConfirmationParams:
        if self.deny_message is not None and self.result != "deny":
            raise ValueError("deny_message is only allowed with result: deny")
        return self


class UserCustomToolResultParams(_Params):
    type: Literal["user.custom_tool_result"]
    custom_tool_use_id: str
    content: list[ResultBlock] | None = None
    is_error: bool | None = None
    session_thread_id: str | None = None


class UserToolResultParams(_Params):
    type: Literal["user.tool_result"]
    tool_use_id: str
    content: list[ResultBlock] | None = None
    is_error: bool | None = None
    session_thread_id: str | None = None


class SystemMessageParams(_Params):
    type: Literal["system.message"]
    content: list[TextBlock] = Field(min_length=1, max_length=1000)


ClientEventParams = Annotated[
    UserMessageParams
    | UserInterruptParams
    | UserToolConfirmationParams
    | UserCustomToolResultParams
    | UserToolResultParams
    | SystemMessageParams,
    Field(discriminator="type"),
]

# Client events the server marks processed the moment it stores them.
PROCESSED_ON_RECEIPT = frozenset({"user.custom_tool_result", "user.tool_result"})


def persist_params(params: BaseModel, event_id: str, now: datetime) -> Event:
    """The persisted copy of a client event: same fields, plus id and (maybe) processed_at."""
    data = params.model_dump()
    if "session_thread_id" in data and data["type"] != "user.interrupt":
        data["session_thread_id"] = None  # replies are routed by tool-use id; corral has one thread
    processed = now if data["type"] in PROCESSED_ON_RECEIPT else None
    return _PERSISTED[data["type"]](id=event_id, processed_at=processed, **data)


_PERSISTED: dict[str, type[Event]] = {
    "user.message": UserMessage,
    "user.interrupt": UserInterrupt,
    "user.tool_confirmation": UserToolConfirmation,
    "user.custom_tool_result": UserCustomToolResult,
    "user.tool_result": UserToolResult,
    "system.message": SystemMessage,
}
