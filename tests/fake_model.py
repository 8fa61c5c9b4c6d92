"""A scripted fake model server speaking the real Anthropic and OpenAI wire formats over real HTTP.

Tests have no network and no API key; this is the one stand-in the test suite allows. It is a real
server (uvicorn in a background thread on 127.0.0.1), so the official SDK, our clients and worker
subprocesses (pointed at it with `ANTHROPIC_BASE_URL`) all talk to it exactly as to the real API.

    with FakeModel() as fake:
        fake.reply(tool_use=[("bash", {"command": "ls"})])   # first model call
        fake.fail(529, times=2)                               # the next two calls
        fake.reply(text="done")                               # then this
        ...                                                   # point a client at fake.url
        assert fake.requests[0].json["tools"][0]["name"] == "bash"

Each model call takes the next scripted item; when the script is empty it asks the
`respond_with` function, and failing that echoes the last user text, so a forgotten script never
hangs a test. Usage is deterministic: input = chars of system+messages // 4, output = chars of the
reply // 4 (at least 1 each), recorded per request in `fake.requests[i].usage`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from corral.listen import listen_socket

__all__ = ["Failure", "FakeModel", "RecordedRequest", "Reply", "ToolCall", "last_user_text", "tool_results"]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STATUS_OF_TYPE = {
    "overloaded_error": 529,
    "api_error": 500,
    **{v: k for k, v in ERROR_TYPES.items() if k < 500},
}
_OPENAI_FINISH = {
    "end_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "refusal": "content_filter",
}


def new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


# -- the script ------------------------------------------------------------------------------------


@dataclass
class ToolCall:
    name: str
    input: dict[str, Any] | str
    """The tool input; a str is sent verbatim as the streamed JSON text (to test malformed input)."""
    id: str = field(default_factory=lambda: new_id("toolu_"))

    @property
    def arguments(self) -> str:
        return self.input if isinstance(self.input, str) else json.dumps(self.input)

    @property
    def parsed_input(self) -> Any:
        try:
            return json.loads(self.arguments)
        except ValueError:
            return {}


@dataclass
class Reply:
    """One model response. Blocks come in the order redacted_thinking, thinking, text, tool_use."""

    text: str | None = None
    tool_use: list[ToolCall | tuple[Any, ...]] = field(default_factory=list)
    """ToolCall, (name, input) or (name, input, id)."""
    thinking: str | None = None
    redacted_thinking: str | None = None
    stop_reason: str | None = None
    """Default: tool_use if there are tool calls, else end_turn."""
    delay: float = 0.0
    """Seconds to wait before each streamed chunk (before the whole body when not streaming)."""
    hang: bool = False
    """Stream the content, then hang until the client disconnects or the fake stops."""
    error: str | None = None
    """Stream the content, then an SSE `error` event of this type (e.g. "overloaded_error")."""
    usage: dict[str, int] = field(default_factory=dict)
    """Overrides of the computed usage: input_tokens, output_tokens, cache_*_input_tokens."""

    def __post_init__(self) -> None:
        self.tool_use = [c if isinstance(c, ToolCall) else ToolCall(*c) for c in self.tool_use]

    @property
    def calls(self) -> list[ToolCall]:
        return [c for c in self.tool_use if isinstance(c, ToolCall)]

    @property
    def stop(self) -> str:
        return self.stop_reason or ("tool_use" if self.tool_use else "end_turn")


@dataclass
class Failure:
    """An HTTP error response in the real error envelope."""

    status: int = 529
    message: str | None = None
    retry_after: float | None = None
    error_type: str | None = None

    @property
    def type(self) -> str:
        return self.error_type or ERROR_TYPES.get(
            self.status, "api_error" if self.status >= 500 else "invalid_request_error"
        )


Responder = Callable[[dict[str, Any]], "Reply | Failure | str | None"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    served: Reply | Failure | None = None
    """What the fake answered (None if the request was rejected as invalid)."""
    usage: dict[str, int] | None = None
    completed: bool = False
    aborted: bool = False
    """The client went away before the response finished."""


# -- conversation helpers (both wire formats) ------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def tool_results(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(tool_use_id, text) for each tool result in the last user turn, in either wire format."""
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "tool":  # OpenAI: trailing tool messages
        out = []
        for m in reversed(messages):
            if m.get("role") != "tool":
                break
            out.append((m.get("tool_call_id", ""), _text_of(m.get("content"))))
        return out[::-1]
    last = messages[-1] if messages else {}
    content = last.get("content") if last.get("role") == "user" else None
    if not isinstance(content, list):
        return []
    return [
        (b.get("tool_use_id", ""), _text_of(b.get("content")))
        for b in content
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn in either wire format (tool results' text if it has no text)."""
    for m in reversed(body.get("messages") or []):
        if m.get("role") in ("user", "tool"):
            return _text_of(m.get("content")) or "\n".join(t for _, t in tool_results(body))
    return ""


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, int]:
    prompt = sum(len(s) for s in _strings([body.get("system"), body.get("messages")]))
    out = len(reply.text or "") + len(reply.thinking or "")
    out += sum(len(c.name) + len(c.arguments) for c in reply.calls)
    usage = {
        "input_tokens": max(1, prompt // 4),
        "output_tokens": max(1, out // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    usage.update(reply.usage)
    return usage


# -- request validation (the real APIs reject these; a harness bug should fail loudly here too) ------


def _validate_anthropic(body: Any, headers: dict[str, str]) -> Failure | None:
    if not (headers.get("x-api-key") or headers.get("authorization")):
        return Failure(401, "x-api-key header is required")
    if not isinstance(body, dict):
        return Failure(400, "request body must be a JSON object")
    for key, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(body.get(key), kind):
            return Failure(400, f"{key}: Field required")
    messages = body["messages"]
    if not messages:
        return Failure(400, "messages: at least one message is required")
    for i, m in enumerate(messages):
        content = m.get("content")
        if m.get("role") not in ("user", "assistant"):
            return Failure(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = content if isinstance(content, list) else []
        if any(b.get("type") == "text" and not b.get("text") for b in blocks):
            return Failure(400, f"messages.{i}: text content blocks must be non-empty")
        if m["role"] != "assistant":
            continue
        ids = [b.get("id") for b in blocks if b.get("type") == "tool_use"]
        nxt = messages[i + 1].get("content") if i + 1 < len(messages) else None
        answered = (
            {b.get("tool_use_id") for b in nxt if b.get("type") == "tool_result"} if isinstance(nxt, list) else set()
        )
        missing = [x for x in ids if x not in answered]
        if missing:
            return Failure(
                400,
                f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message.",
            )
        if unexpected := answered - set(ids):
            return Failure(
                400,
                f"messages.{i + 1}.content: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {', '.join(sorted(unexpected))}",
            )
    return None


def _validate_openai(body: Any) -> Failure | None:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return Failure(400, "model: field required")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return Failure(400, "messages: field required")
    pending: set[str] = set()
    for i, m in enumerate(body["messages"]):
        if m.get("role") == "tool":
            if m.get("tool_call_id") not in pending:
                return Failure(
                    400,
                    f"messages.{i}: messages with role 'tool' must be a response to a "
                    "preceding message with 'tool_calls'",
                )
            pending.discard(m["tool_call_id"])
            continue
        if pending:
            return Failure(400, f"messages.{i}: tool_calls without responses: {', '.join(sorted(pending))}")
        pending = {c.get("id") for c in m.get("tool_calls") or []}
    return None


# -- wire formats ----------------------------------------------------------------------------------

_PAUSE = object()  # where a reply hangs or fails mid-stream: after the content, before the end


def _words(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*", text) or [text]


def _pieces(text: str, n: int = 4) -> list[str]:
    size = max(1, math.ceil(len(text) / n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _signature(thinking: str) -> str:
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest() * 3).decode()


def _anthropic_blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.redacted_thinking is not None:
        blocks.append({"type": "redacted_thinking", "data": reply.redacted_thinking})
    if reply.thinking is not None:
        blocks.append({"type": "thinking", "thinking": reply.thinking, "signature": _signature(reply.thinking)})
    if reply.text is not None:
        blocks.append({"type": "text", "text": reply.text})
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.parsed_input} for c in reply.calls]
    return blocks


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _anthropic_stream(reply: Reply, model: str, usage: dict[str, int]) -> Iterator[bytes | object]:
    """SSE frames as the real API sends them; content deltas are yielded as (frame,) tuples (delayable)."""
    start_usage = {**usage, "output_tokens": 1}
    message = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    yield _sse("message_start", {"type": "message_start", "message": message})
    blocks = _anthropic_blocks(reply)
    first_call = len(blocks) - len(reply.calls)
    arguments = {first_call + n: c.arguments for n, c in enumerate(reply.calls)}
    if not blocks:
        yield _sse("ping", {"type": "ping"})
    for i, block in enumerate(blocks):
        kind = block["type"]
        empty = {
            "text": {"text": ""},
            "thinking": {"thinking": "", "signature": ""},
            "tool_use": {"id": block.get("id"), "name": block.get("name"), "input": {}},
        }.get(kind, block)
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": i, "content_block": {**empty, "type": kind}},
        )
        if i == 0:
            yield _sse("ping", {"type": "ping"})
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            deltas = [{"type": "text_delta", "text": w} for w in _words(block["text"])]
        elif kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": w} for w in _words(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "tool_use":
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": p} for p in _pieces(arguments[i])]
        for delta in deltas:
            yield (_sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}),)
        if i < len(blocks) - 1:
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": i})
    yield _PAUSE
    if blocks:
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": len(blocks) - 1})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


def _anthropic_message(reply: Reply, model: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _anthropic_blocks(reply),
        "stop_reason": reply.stop,
        "stop_sequence": None,
        "usage": usage,
    }


def _openai_usage(usage: dict[str, int]) -> dict[str, Any]:
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": usage["output_tokens"],
        "total_tokens": prompt + usage["output_tokens"],
    }
    if usage["cache_read_input_tokens"]:
        out["prompt_tokens_details"] = {"cached_tokens": usage["cache_read_input_tokens"]}
    return out


def _openai_stream(
    reply: Reply, model: str, usage: dict[str, int], reasoning_field: str, include_usage: bool
) -> Iterator[bytes | object]:
    base = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    for w in _words(reply.thinking) if reply.thinking else []:
        yield (chunk({reasoning_field: w}),)
    for w in _words(reply.text) if reply.text else []:
        yield (chunk({"content": w}),)
    for n, call in enumerate(reply.calls):
        yield (
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": n,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            ),
        )
        for piece in _pieces(call.arguments):
            yield (chunk({"tool_calls": [{"index": n, "function": {"arguments": piece}}]}),)
    yield _PAUSE
    yield chunk({}, _OPENAI_FINISH.get(reply.stop, "stop"))
    if include_usage:
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': _openai_usage(usage)})}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _openai_completion(reply: Reply, model: str, usage: dict[str, int], reasoning_field: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.thinking:
        message[reasoning_field] = reply.thinking
    if reply.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.calls
        ]
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _OPENAI_FINISH.get(reply.stop, "stop"),
            }
        ],
        "usage": _openai_usage(usage),
    }


def _error_body(failure: Failure, openai: bool) -> dict[str, Any]:
    message = failure.message or {529: "Overloaded", 429: "Rate limited"}.get(failure.status, failure.type)
    if openai:
        return {"error": {"message": message, "type": failure.type, "param": None, "code": failure.status}}
    return {"type": "error", "error": {"type": failure.type, "message": message}}


# -- the server ------------------------------------------------------------------------------------


class FakeModel:
    """A scripted model server on 127.0.0.1; `url` is its base URL (without `/v1`)."""

    def __init__(self, *, openai_reasoning_field: str = "reasoning_content") -> None:
        self.openai_reasoning_field = openai_reasoning_field
        self._lock = threading.Lock()
        self._script: deque[Reply | Failure] = deque()
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._closing = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> FakeModel:
        sock = listen_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            proxy_headers=False,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="none",
            http="h11",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._closing.clear()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-model-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake model server failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._closing.set()  # ends hanging and delayed responses
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # scripting

    def reply(
        self,
        text: str | None = None,
        *,
        tool_use: list[ToolCall | tuple[Any, ...]] | None = None,
        thinking: str | None = None,
        redacted_thinking: str | None = None,
        stop_reason: str | None = None,
        delay: float = 0.0,
        hang: bool = False,
        error: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> FakeModel:
        """Queue one response (see `Reply`). Returns self, so calls chain."""
        return self.push(
            Reply(
                text=text,
                tool_use=list(tool_use or []),
                thinking=thinking,
                redacted_thinking=redacted_thinking,
                stop_reason=stop_reason,
                delay=delay,
                hang=hang,
                error=error,
                usage=dict(usage or {}),
            )
        )

    def fail(
        self,
        status: int = 529,
        *,
        times: int = 1,
        message: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> FakeModel:
        """Queue `times` error responses with this HTTP status, in the real error envelope."""
        for _ in range(times):
            self.push(Failure(status, message, retry_after, error_type))
        return self

    def push(self, *items: Reply | Failure) -> FakeModel:
        with self._lock:
            self._script.extend(items)
        return self

    def respond_with(self, fn: Responder | None) -> FakeModel:
        """Answer unscripted calls with `fn(request_json)`: a Reply, a Failure, a str (text reply) or
        None (fall back to the echo). Scripted items still go first."""
        self._responder = fn
        return self

    def reset(self) -> None:
        """Forget the script, the responder and the recorded requests."""
        with self._lock:
            self._script.clear()
            self._requests.clear()
        self._responder = None

    @property
    def pending(self) -> int:
        """Scripted items not yet served."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def model_requests(self) -> list[RecordedRequest]:
        """The requests that got a model response or a scripted failure (not rejected ones)."""
        return [r for r in self.requests if r.served is not None]

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait (without blocking the event loop) until `n` requests have arrived."""
        deadline = time.monotonic() + timeout
        while len(reqs := self.requests) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake model got {len(reqs)} requests, expected {n}")
            await asyncio.sleep(0.02)
        return reqs

    def _next(self, body: dict[str, Any]) -> Reply | Failure:
        with self._lock:
            if self._script:
                return self._script.popleft()
        answer = self._responder(body) if self._responder else None
        if isinstance(answer, str):
            return Reply(text=answer)
        return answer if answer is not None else Reply(text=f"echo: {last_user_text(body)}")

    # HTTP

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(scope["method"], scope["path"], headers, body)
        with self._lock:
            self._requests.append(record)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._route(record, send, gone)
        finally:
            watcher.cancel()
            if not record.completed and (gone.is_set() or self._closing.is_set()):
                record.aborted = True

    async def _route(self, record: RecordedRequest, send: Any, gone: asyncio.Event) -> None:
        path = record.path.rstrip("/")
        openai = path.endswith("/chat/completions")
        if record.method != "POST" or not (openai or path.endswith("/v1/messages")):
            await self._send_json(send, 404, _error_body(Failure(404, f"no route for {record.method} {path}"), openai))
            record.completed = True
            return
        body = record.json
        invalid = _validate_openai(body) if openai else _validate_anthropic(body, record.headers)
        if invalid is not None:
            await self._send_json(send, invalid.status, _error_body(invalid, openai))
            record.completed = True
            return
        item = self._next(body)
        record.served = item
        if isinstance(item, Failure):
            extra = {"retry-after": f"{item.retry_after:g}"} if item.retry_after is not None else {}
            await self._send_json(send, item.status, _error_body(item, openai), extra)
            record.completed = True
            return
        usage = record.usage = _usage(body, item)
        if body.get("stream"):
            if openai:
                include = bool((body.get("stream_options") or {}).get("include_usage"))
                frames = _openai_stream(item, body["model"], usage, self.openai_reasoning_field, include)
            else:
                frames = _anthropic_stream(item, body["model"], usage)
            record.completed = await self._stream(send, item, frames, gone, openai)
            return
        else:
            if not await self._sleep(math.inf if item.hang else item.delay, gone):
                if not gone.is_set():  # the fake is stopping: answer rather than leave uvicorn to complain
                    await self._send_json(send, 500, _error_body(Failure(500, "fake model stopped"), openai))
                return
            if item.error:
                failure = Failure(_STATUS_OF_TYPE.get(item.error, 500), error_type=item.error)
                await self._send_json(send, failure.status, _error_body(failure, openai))
            elif openai:
                await self._send_json(
                    send, 200, _openai_completion(item, body["model"], usage, self.openai_reasoning_field)
                )
            else:
                await self._send_json(send, 200, _anthropic_message(item, body["model"], usage))
        record.completed = not gone.is_set()

    async def _stream(
        self, send: Any, reply: Reply, frames: Iterator[bytes | object], gone: asyncio.Event, openai: bool
    ) -> bool:
        """Send the frames, honouring delay/hang/error; False if cut short by a disconnect or stop."""
        finished = True
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"request-id", new_id("req_").encode()),
                ],
            }
        )
        for frame in frames:
            if frame is _PAUSE:
                if reply.hang:
                    await self._sleep(math.inf, gone)
                    finished = False
                    break
                if reply.error:
                    failure = Failure(_STATUS_OF_TYPE.get(reply.error, 500), error_type=reply.error)
                    error = _error_body(failure, openai)
                    payload = f"data: {json.dumps(error)}\n\n" if openai else _sse("error", error).decode()
                    await send({"type": "http.response.body", "body": payload.encode(), "more_body": True})
                    break
                continue
            if isinstance(frame, tuple):
                frame = frame[0]
                if not await self._sleep(reply.delay, gone):
                    finished = False
                    break
            if gone.is_set():
                finished = False
                break
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return finished

    async def _sleep(self, seconds: float, gone: asyncio.Event) -> bool:
        """Sleep unless the client leaves or the fake stops first; False if cut short."""
        deadline = time.monotonic() + seconds
        while not (gone.is_set() or self._closing.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.02))
        return False

    @staticmethod
    async def _send_json(send: Any, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode()
        hs = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"request-id", new_id("req_").encode()),
        ]
        hs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hs})
        await send({"type": "http.response.body", "body": raw, "more_body": False})
