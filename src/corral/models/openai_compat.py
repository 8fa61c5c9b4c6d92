"""Backend for any OpenAI-compatible `/chat/completions` server (vLLM, Ollama, LiteLLM, ...).

Everything above the `ModelClient` seam speaks the Anthropic Messages format, so this module
translates at the edge: Messages request -> chat completion request, and streamed chunks -> content
blocks. Thinking blocks are dropped from history (these servers cannot verify them); streamed
`reasoning_content` / `reasoning` comes back as a `thinking` block with an empty signature.
"""

from __future__ import annotations

import email.utils
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from corral.models.base import (
    BlockStart,
    ModelError,
    ModelErrorKind,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    Usage,
)

__all__ = [
    "OpenAICompatClient",
    "error_kind_for_status",
    "parse_retry_after",
    "parse_tool_input",
    "to_openai_request",
]

_STOP_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}
_REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
_EMPTY_BLOCKS = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}


class OpenAICompatClient:
    """A `ModelClient` for an OpenAI-compatible server; `base_url` includes the version, e.g. `.../v1`."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)))

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamItem]:
        body = to_openai_request(request)
        try:
            async with self._http.stream("POST", f"{self.base_url}/chat/completions", json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _status_error(resp)
                folder = _ChunkFolder(request.model)
                async for data in _sse_data(resp):
                    if data.strip() == "[DONE]":
                        folder.done = True
                        break
                    for item in folder.feed(_loads_chunk(data)):
                        yield item
            yield folder.finish()
        except httpx.TimeoutException as exc:
            raise ModelError("request_failed", f"the model request timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ModelError("request_failed", f"model request failed: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()


# -- request translation -------------------------------------------------------------------------


def to_openai_request(request: ModelRequest) -> dict[str, Any]:
    """The chat completion request body equivalent to a Messages-format `ModelRequest`."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        if message.get("role") == "assistant":
            messages.append(_assistant_message(message.get("content")))
        else:
            messages.extend(_user_messages(message.get("content")))
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    return body


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def _assistant_message(content: Any) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _blocks(content):
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        # thinking / redacted_thinking and server-side blocks have no OpenAI equivalent: dropped.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user_messages(content: Any) -> list[dict[str, Any]]:
    """Tool results become `tool` messages (which must directly follow the assistant's tool_calls);
    the rest of the turn, including images a tool returned, becomes one user message after them."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "tool_result":
            inner = _blocks(block.get("content"))
            text = "\n".join(b.get("text", "") for b in inner if b.get("type") == "text")
            if block.get("is_error"):
                text = f"Error: {text}" if text else "Error"
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text})
            parts.extend(p for b in inner if b.get("type") == "image" and (p := _image_part(b)))
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and (part := _image_part(block)):
            parts.append(part)
        elif kind == "document" and (block.get("source") or {}).get("type") == "text":
            parts.append({"type": "text", "text": block["source"].get("data", "")})
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


# -- response translation ------------------------------------------------------------------------


async def _sse_data(resp: httpx.Response) -> AsyncIterator[str]:
    """The `data` payloads of a server-sent event stream (comments and other fields ignored)."""
    lines: list[str] = []
    async for line in resp.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def _loads_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise ModelError("request_failed", f"unparseable stream chunk: {data[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise ModelError("request_failed", f"unexpected stream chunk: {data[:200]!r}")
    return chunk


class _ChunkFolder:
    """Folds chat completion chunks into Messages content blocks, yielding items as they start/grow."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.blocks: list[dict[str, Any]] = []
        self.open_index: int | None = None  # the text or thinking block receiving deltas
        self.calls: dict[Any, int] = {}  # tool call index (or id) -> block index
        self.arguments: dict[int, list[str]] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.done = False

    def feed(self, chunk: dict[str, Any]) -> list[StreamItem]:
        if "error" in chunk or chunk.get("object") == "error":
            error = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
            raise ModelError("request_failed", f"error mid-stream: {_error_message(error, json.dumps(chunk))}")
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("usage"), dict):
            self._take_usage(chunk["usage"])
        items: list[StreamItem] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = next((delta[f] for f in _REASONING_FIELDS if isinstance(delta.get(f), str)), "")
            if reasoning:
                items += self._append("thinking", reasoning)
            if isinstance(delta.get("content"), str) and delta["content"]:
                items += self._append("text", delta["content"])
            for call in delta.get("tool_calls") or []:
                items += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return items

    def finish(self) -> ModelResponse:
        if not self.done and self.finish_reason is None:
            raise ModelError("request_failed", "the model stream ended before it finished")
        for index, parts in self.arguments.items():
            self.blocks[index]["input"] = parse_tool_input("".join(parts))
        has_calls = bool(self.calls)
        stop = _STOP_REASONS.get(self.finish_reason or "", "end_turn")
        if has_calls and stop == "end_turn":  # some servers say "stop" after tool calls
            stop = "tool_use"
        return ModelResponse(content=self.blocks, stop_reason=stop, usage=self.usage, model=self.model)

    def _append(self, kind: str, text: str) -> list[StreamItem]:
        items: list[StreamItem] = []
        if self.open_index is None or self.blocks[self.open_index]["type"] != kind:
            self.blocks.append(dict(_EMPTY_BLOCKS[kind]))
            self.open_index = len(self.blocks) - 1
            items.append(BlockStart(index=self.open_index, kind=kind))
        self.blocks[self.open_index][kind] += text
        if kind == "text":
            items.append(TextDelta(index=self.open_index, text=text))
        return items

    def _tool_delta(self, call: dict[str, Any]) -> list[StreamItem]:
        items: list[StreamItem] = []
        key = call.get("index")
        if key is None:
            key = call.get("id") or len(self.calls)
        function = call.get("function") or {}
        if key not in self.calls:
            self.open_index = None
            tool_id = call.get("id") or f"toolu_{secrets.token_hex(12)}"
            self.blocks.append({"type": "tool_use", "id": tool_id, "name": "", "input": {}})
            self.calls[key] = len(self.blocks) - 1
            self.arguments[self.calls[key]] = []
            items.append(BlockStart(index=self.calls[key], kind="tool_use"))
        index = self.calls[key]
        block = self.blocks[index]
        name = function.get("name")
        if name and name != block["name"]:  # normally sent once; some servers repeat it
            block["name"] += name
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a few servers send parsed arguments
            arguments = json.dumps(arguments)
        if arguments:
            self.arguments[index].append(arguments)
        return items

    def _take_usage(self, usage: dict[str, Any]) -> None:
        # OpenAI counts cached prompt tokens inside prompt_tokens; Anthropic counts them apart.
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        self.usage = Usage(
            input_tokens=max(0, (usage.get("prompt_tokens") or 0) - cached),
            output_tokens=usage.get("completion_tokens") or 0,
            cache_read_input_tokens=cached,
        )


# -- errors and shared wire helpers ----------------------------------------------------------------


def _status_error(resp: httpx.Response) -> ModelError:
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    source = error if isinstance(error, dict) else body if isinstance(body, dict) else {}
    message = _error_message(source, resp.text.strip()[:500] or f"HTTP {resp.status_code}")
    return ModelError(
        error_kind_for_status(resp.status_code),
        message,
        status_code=resp.status_code,
        retry_after=parse_retry_after(resp.headers),
    )


def _error_message(error: Any, fallback: str) -> str:
    if isinstance(error, dict):
        for key in ("message", "detail", "error"):
            if isinstance(error.get(key), str) and error[key]:
                return error[key]
    return fallback


def parse_tool_input(raw: str) -> dict[str, Any]:
    """Tool input from streamed JSON text; unparseable input becomes `{"_raw": raw}` rather than a crash,
    so the harness can answer the model with a tool error instead of failing the session."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


def error_kind_for_status(status: int) -> ModelErrorKind:
    """The retry class of an HTTP error status, shared by every backend."""
    if status in (503, 529):
        return "overloaded"
    if status == 429:
        return "rate_limited"
    if status == 402:
        return "billing"
    if status >= 500:
        return "request_failed"
    return "invalid_request"


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or an HTTP date), if given."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
