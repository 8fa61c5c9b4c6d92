"""Anthropic Messages API backend, streaming through the official SDK.

The SDK runs with `max_retries=0`: the harness owns retries, so every attempt is its own span and an
interrupt never waits out a backoff hidden inside the SDK. Raw stream events are folded here into
`BlockStart`/`TextDelta` items and one finished `ModelResponse` of plain Messages-format dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2

from corral.models.base import (
    BlockStart,
    ModelError,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    Usage,
)
from corral.models.openai_compat import error_kind_for_status, parse_retry_after, parse_tool_input

__all__ = ["AnthropicClient"]


class AnthropicClient:
    """A `ModelClient` for the Anthropic API (or anything speaking it, such as the test fake).

    `api_key` and `base_url` default to `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL` (read by the SDK).
    """

    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 600) -> None:
        self._config_error: str | None = None
        self._client: anthropic.AsyncAnthropic | None = None
        try:
            self._client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        except anthropic.CredentialsError as exc:  # e.g. a broken credentials profile on disk
            self._config_error = str(exc)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamItem]:
        client = self._configured_client()
        stream: anthropic.AsyncStream[Any] | None = None
        try:
            stream = await client.messages.create(**_params(request), stream=True)
            folder = _EventFolder()
            async for event in stream:
                for item in folder.feed(event):
                    yield item
            yield folder.finish()
        except anthropic.APIError as exc:
            raise _model_error(exc) from exc
        except anthropic.AnthropicError as exc:  # e.g. CredentialsError: a configuration problem
            raise ModelError("invalid_request", str(exc)) from exc
        except httpx2.HTTPError as exc:  # a transport failure while reading the body
            raise ModelError("request_failed", f"stream broke: {type(exc).__name__}: {exc}") from exc
        finally:
            # Runs on cancellation too: closing the response aborts the HTTP stream at once.
            if stream is not None:
                await stream.close()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    def _configured_client(self) -> anthropic.AsyncAnthropic:
        # Configuration problems are reported per request as ModelError, like any other failure,
        # instead of a crash at startup or the SDK's bare TypeError at request time.
        c = self._client
        if c is None:
            raise ModelError("invalid_request", f"Anthropic credentials: {self._config_error}")
        if c.api_key is None and c.auth_token is None and getattr(c, "credentials", None) is None:
            raise ModelError("invalid_request", "no Anthropic credentials: set ANTHROPIC_API_KEY (or pass api_key)")
        return c


def _params(request: ModelRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": request.messages,
    }
    if request.system:
        params["system"] = request.system
    if request.tools:
        params["tools"] = request.tools
    if request.thinking:
        params["thinking"] = request.thinking
    return params


class _EventFolder:
    """Folds raw stream events into finished content blocks, yielding the items the harness streams."""

    def __init__(self) -> None:
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial_json: dict[int, list[str]] = {}
        self.stop_reason: str | None = None
        self.model = ""
        self.usage = {"input": 0, "output": 0, "cache_creation": 0, "cache_read": 0}
        self.stopped = False

    def feed(self, event: Any) -> list[StreamItem]:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = event.message
            self.model = message.model or ""
            self._take_usage(message.usage, output=True)
        elif kind == "content_block_start":
            return self._start(event.index, event.content_block.to_dict(mode="json", exclude_none=True))
        elif kind == "content_block_delta":
            return self._delta(event.index, event.delta)
        elif kind == "content_block_stop":
            self._finish_block(event.index)
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self._take_usage(event.usage, output=True)
        elif kind == "message_stop":
            self.stopped = True
        return []

    def finish(self) -> ModelResponse:
        if not self.stopped:
            raise ModelError("request_failed", "the model stream ended before message_stop")
        for index in self.partial_json.copy():
            self._finish_block(index)
        u = self.usage
        return ModelResponse(
            content=[self.blocks[i] for i in sorted(self.blocks)],
            stop_reason=self.stop_reason,
            usage=Usage(
                input_tokens=u["input"],
                output_tokens=u["output"],
                cache_creation_input_tokens=u["cache_creation"],
                cache_read_input_tokens=u["cache_read"],
            ),
            model=self.model,
        )

    def _start(self, index: int, block: dict[str, Any]) -> list[StreamItem]:
        block = {"type": block.get("type"), **block}  # "type" first, as the API writes blocks
        self.blocks[index] = block
        items: list[StreamItem] = [BlockStart(index=index, kind=str(block.get("type", "")))]
        if block.get("type") == "text" and block.get("text"):
            items.append(TextDelta(index=index, text=block["text"]))
        return items

    def _delta(self, index: int, delta: Any) -> list[StreamItem]:
        block = self.blocks.setdefault(index, {"type": "text", "text": ""})
        kind = getattr(delta, "type", None)
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.text
            return [TextDelta(index=index, text=delta.text)]
        if kind == "input_json_delta":
            self.partial_json.setdefault(index, []).append(delta.partial_json)
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.thinking
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta.signature
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.citation.to_dict(mode="json", exclude_none=True))
        return []

    def _finish_block(self, index: int) -> None:
        parts = self.partial_json.pop(index, None)
        if parts is not None and index in self.blocks:
            self.blocks[index]["input"] = parse_tool_input("".join(parts))

    def _take_usage(self, usage: Any, *, output: bool) -> None:
        # message_delta counts are cumulative; max() keeps message_start's numbers if a proxy sends 0s.
        if usage is None:
            return
        for key, attr in (
            ("input", "input_tokens"),
            ("cache_creation", "cache_creation_input_tokens"),
            ("cache_read", "cache_read_input_tokens"),
        ):
            self.usage[key] = max(self.usage[key], getattr(usage, attr, None) or 0)
        if output and getattr(usage, "output_tokens", None) is not None:
            self.usage["output"] = usage.output_tokens


def _model_error(exc: anthropic.APIError) -> ModelError:
    if isinstance(exc, anthropic.APIStatusError):
        message = getattr(exc, "api_message", None) or exc.message
        if exc.status_code < 400:
            # An SSE `error` event after a 200: the stream broke mid-way, whatever its error type.
            error_type = getattr(exc, "type", None) or "error"
            return ModelError("request_failed", f"{error_type} mid-stream: {message}")
        return ModelError(
            error_kind_for_status(exc.status_code),
            message,
            status_code=exc.status_code,
            retry_after=parse_retry_after(exc.response.headers),
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelError("request_failed", "the model request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        return ModelError("request_failed", f"could not reach the model API{detail}")
    return ModelError("request_failed", exc.message)
