"""The `ModelClient` seam: turning messages + tools into streamed deltas, a final response and usage.

The harness speaks one dialect to every model backend: the Anthropic Messages format (content blocks
`text`, `thinking`, `redacted_thinking`, `tool_use`, `tool_result`, ...). Backends for other wire formats
(OpenAI-compatible chat completions) translate at their edge, so nothing above this seam knows which
provider answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "BlockStart",
    "ModelClient",
    "ModelError",
    "ModelErrorKind",
    "ModelRequest",
    "ModelResponse",
    "StreamItem",
    "TextDelta",
    "Usage",
]


@dataclass(frozen=True)
class ModelRequest:
    """One model call. `messages` and `tools` are in the Anthropic Messages API shape."""

    model: str
    messages: list[dict[str, Any]]
    system: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int = 8192
    thinking: dict[str, Any] | None = None
    """Passed through as the Messages API `thinking` parameter where the backend supports it."""


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass(frozen=True)
class BlockStart:
    """A content block began at `index`; `kind` is the Messages block type (text, thinking, tool_use...)."""

    index: int
    kind: str


@dataclass(frozen=True)
class TextDelta:
    """More text for the `text` block at `index` (only text blocks produce deltas here)."""

    index: int
    text: str


@dataclass(frozen=True)
class ModelResponse:
    """The finished response: always the last item a stream yields."""

    content: list[dict[str, Any]]
    """Messages content blocks: {"type":"text","text"}, {"type":"thinking","thinking","signature"},
    {"type":"redacted_thinking","data"}, {"type":"tool_use","id","name","input"}."""
    stop_reason: str | None
    """end_turn | tool_use | max_tokens | stop_sequence | pause_turn | refusal | model_context_window_exceeded"""
    usage: Usage
    model: str = ""


StreamItem = BlockStart | TextDelta | ModelResponse

ModelErrorKind = Literal["overloaded", "rate_limited", "request_failed", "billing", "invalid_request"]


class ModelError(Exception):
    """A failed model call, classified so the harness can decide to retry and which session error to emit.

    - overloaded (HTTP 529, or 503): retryable -> `model_overloaded_error`
    - rate_limited (HTTP 429): retryable -> `model_rate_limited_error`
    - request_failed (5xx, connection errors, timeouts, a stream that broke mid-way): retryable
      -> `model_request_failed_error`
    - billing (HTTP 402): not retryable -> `billing_error`
    - invalid_request (other 4xx, e.g. bad model name, auth): not retryable -> `model_request_failed_error`
    """

    def __init__(
        self,
        kind: ModelErrorKind,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ModelErrorKind = kind
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in ("overloaded", "rate_limited", "request_failed")


@runtime_checkable
class ModelClient(Protocol):
    """A model backend. Implementations must be safe to share between concurrent sessions."""

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamItem]:
        """Yield `BlockStart`/`TextDelta` items as they arrive, then exactly one `ModelResponse`.

        Raises `ModelError` for any failure (before or during the stream). Cancelling the
        consuming task must abort the underlying HTTP request promptly (used by `user.interrupt`).
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
