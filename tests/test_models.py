"""Model clients against the scripted fake model server, over real HTTP in both wire formats."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from corral.models.anthropic import AnthropicClient
from corral.models.base import (
    BlockStart,
    ModelClient,
    ModelError,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
)
from corral.models.openai_compat import OpenAICompatClient
from corral.models.router import ModelRouter

from .fake_model import FakeModel, Reply, last_user_text, tool_results

HELLO = ModelRequest(model="test-model", system="Be brief.", messages=[{"role": "user", "content": "Say hi"}])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModel]:
    with FakeModel() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_script(fake: FakeModel) -> None:
    fake.reset()


@pytest.fixture(params=["anthropic", "openai"])
async def model_client(request: pytest.FixtureRequest, fake: FakeModel) -> AsyncIterator[ModelClient]:
    """Each backend-neutral test runs against both wire formats."""
    backend: ModelClient
    if request.param == "anthropic":
        backend = AnthropicClient(api_key="test-key", base_url=fake.url)
    else:
        backend = OpenAICompatClient(fake.openai_url, api_key="test-key")
    yield backend
    await backend.aclose()


async def collect(client: ModelClient, request: ModelRequest = HELLO) -> tuple[list[StreamItem], ModelResponse]:
    items = [item async for item in client.stream(request)]
    assert isinstance(items[-1], ModelResponse)
    assert not any(isinstance(i, ModelResponse) for i in items[:-1])
    return items[:-1], items[-1]


async def model_error(client: ModelClient, request: ModelRequest = HELLO) -> ModelError:
    with pytest.raises(ModelError) as info:
        await collect(client, request)
    return info.value


# -- streaming content, both backends --------------------------------------------------------------


async def test_text_streams_as_deltas_then_one_response(model_client: ModelClient, fake: FakeModel) -> None:
    fake.reply("Hello there, how are you?")
    items, response = await collect(model_client)

    assert items[0] == BlockStart(index=0, kind="text")
    deltas = [i for i in items[1:] if isinstance(i, TextDelta)]
    assert len(deltas) > 1 and all(d.index == 0 for d in deltas)
    assert "".join(d.text for d in deltas) == "Hello there, how are you?"
    assert response.content == [{"type": "text", "text": "Hello there, how are you?"}]
    assert response.stop_reason == "end_turn"
    served = fake.requests[0].usage
    assert served is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        served["input_tokens"],
        served["output_tokens"],
    )


async def test_tool_use_input_is_reassembled(model_client: ModelClient, fake: FakeModel) -> None:
    command = {"command": "grep -r 'x \"y\"' .", "timeout": 30, "env": {"A": ["ü", 1.5, None]}}
    fake.reply("Let me look.", tool_use=[("bash", command), ("read", {"path": "/a"}, "toolu_fixed")])
    items, response = await collect(model_client)

    starts = [i for i in items if isinstance(i, BlockStart)]
    assert [s.kind for s in starts] == ["text", "tool_use", "tool_use"]
    assert [s.index for s in starts] == [0, 1, 2]
    assert response.stop_reason == "tool_use"
    text, bash, read = response.content
    assert text == {"type": "text", "text": "Let me look."}
    assert bash["type"] == "tool_use" and bash["name"] == "bash" and bash["input"] == command
    assert bash["id"].startswith("toolu_")
    assert read == {"type": "tool_use", "id": "toolu_fixed", "name": "read", "input": {"path": "/a"}}


async def test_malformed_tool_input_is_kept_raw(model_client: ModelClient, fake: FakeModel) -> None:
    fake.reply(tool_use=[("bash", '{"command": "ls"')])
    _, response = await collect(model_client)
    assert response.content[0]["input"] == {"_raw": '{"command": "ls"'}


async def test_thinking_block_comes_before_text(model_client: ModelClient, fake: FakeModel) -> None:
    fake.reply("42", thinking="The user wants the answer.")
    items, response = await collect(model_client)

    assert [i.kind for i in items if isinstance(i, BlockStart)] == ["thinking", "text"]
    assert all(d.index == 1 for d in items if isinstance(d, TextDelta))  # thinking text is not a TextDelta
    thinking, text = response.content
    assert thinking["type"] == "thinking" and thinking["thinking"] == "The user wants the answer."
    assert isinstance(thinking["signature"], str)
    assert text == {"type": "text", "text": "42"}


@pytest.mark.parametrize("stop_reason", ["end_turn", "max_tokens", "refusal"])
async def test_stop_reason(model_client: ModelClient, fake: FakeModel, stop_reason: str) -> None:
    fake.reply("cut", stop_reason=stop_reason)
    _, response = await collect(model_client)
    assert response.stop_reason == stop_reason


# -- errors, both backends -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (529, "overloaded", True),
        (503, "overloaded", True),
        (500, "request_failed", True),
        (402, "billing", False),
        (400, "invalid_request", False),
        (404, "invalid_request", False),
    ],
)
async def test_http_errors_are_classified(
    model_client: ModelClient, fake: FakeModel, status: int, kind: str, retryable: bool
) -> None:
    fake.fail(status, message="scripted failure")
    error = await model_error(model_client)
    assert (error.kind, error.retryable, error.status_code) == (kind, retryable, status)
    assert "scripted failure" in error.message


async def test_rate_limit_carries_retry_after(model_client: ModelClient, fake: FakeModel) -> None:
    fake.fail(429, retry_after=7)
    error = await model_error(model_client)
    assert (error.kind, error.retry_after, error.retryable) == ("rate_limited", 7.0, True)


async def test_failures_are_served_in_order_then_the_reply(model_client: ModelClient, fake: FakeModel) -> None:
    fake.fail(529, times=2).reply("finally")
    assert (await model_error(model_client)).kind == "overloaded"
    assert (await model_error(model_client)).kind == "overloaded"
    _, response = await collect(model_client)
    assert response.content == [{"type": "text", "text": "finally"}]
    assert fake.pending == 0


async def test_error_mid_stream_is_request_failed(model_client: ModelClient, fake: FakeModel) -> None:
    fake.reply("partial answer", error="overloaded_error")
    seen: list[StreamItem] = []
    with pytest.raises(ModelError) as info:
        async for item in model_client.stream(HELLO):
            seen.append(item)
    assert info.value.kind == "request_failed" and info.value.retryable
    assert "".join(i.text for i in seen if isinstance(i, TextDelta)) == "partial answer"


async def test_unreachable_server_is_request_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for backend in (
        AnthropicClient(api_key="k", base_url=f"http://127.0.0.1:{port}"),
        OpenAICompatClient(f"http://127.0.0.1:{port}/v1"),
    ):
        error = await model_error(backend)
        assert error.kind == "request_failed" and error.retryable
        await backend.aclose()


async def test_stream_cut_before_the_end_is_request_failed(model_client: ModelClient) -> None:
    # A separate server we can stop while it is mid-response: the model_client sees a truncated stream.
    own = FakeModel().start()
    try:
        backend = (
            AnthropicClient(api_key="k", base_url=own.url)
            if isinstance(model_client, AnthropicClient)
            else OpenAICompatClient(own.openai_url)
        )
        own.reply("half", hang=True)
        task = asyncio.create_task(collect(backend))
        await own.wait_for_requests(1)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(own.stop)
        with pytest.raises(ModelError) as info:
            await task
        assert info.value.kind == "request_failed"
        await backend.aclose()
    finally:
        own.stop()


# -- cancellation ----------------------------------------------------------------------------------


async def test_cancelling_a_hung_stream_returns_at_once_and_closes_it(
    model_client: ModelClient, fake: FakeModel
) -> None:
    fake.reply("thinking about it", hang=True)
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for item in model_client.stream(HELLO):
            if isinstance(item, TextDelta):
                first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    await wait_until(lambda: fake.requests[0].aborted)  # the server saw the connection go


async def test_cancelling_while_waiting_for_the_first_chunk(model_client: ModelClient, fake: FakeModel) -> None:
    fake.reply("slow", delay=5.0)
    task = asyncio.create_task(collect(model_client))
    await fake.wait_for_requests(1)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    await wait_until(lambda: fake.requests[0].aborted)


async def wait_until(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- Anthropic specifics ---------------------------------------------------------------------------


async def test_anthropic_request_is_passed_through(fake: FakeModel) -> None:
    tools = [{"name": "bash", "description": "Run a command", "input_schema": {"type": "object"}}]
    messages = [
        {"role": "user", "content": "List files"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}]},
    ]
    thinking = {"type": "enabled", "budget_tokens": 2048}
    request = ModelRequest(
        model="claude-test", messages=messages, system="sys", tools=tools, max_tokens=4096, thinking=thinking
    )
    fake.reply(thinking="ok", redacted_thinking="opaque", text="a.txt is there")
    client = AnthropicClient(api_key="secret-key", base_url=fake.url)
    items, response = await collect(client, request)
    await client.aclose()

    sent = fake.requests[0]
    assert sent.path == "/v1/messages"
    assert "secret-key" in sent.headers.get("x-api-key", "") + sent.headers.get("authorization", "")
    assert "anthropic-version" in sent.headers
    body = sent.json
    assert body["stream"] is True and body["model"] == "claude-test" and body["max_tokens"] == 4096
    assert (body["system"], body["tools"], body["messages"], body["thinking"]) == (
        "sys",
        tools,
        messages,
        thinking,
    )
    assert [i.kind for i in items if isinstance(i, BlockStart)] == ["redacted_thinking", "thinking", "text"]
    assert response.content[0] == {"type": "redacted_thinking", "data": "opaque"}
    assert response.model == "claude-test"


async def test_anthropic_without_credentials_is_invalid_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, fake: FakeModel
) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no credentials profile on disk
    monkeypatch.delenv("ANTHROPIC_CONFIG_DIR", raising=False)
    client = AnthropicClient(base_url=fake.url)
    error = await model_error(client)
    await client.aclose()
    assert error.kind == "invalid_request" and "ANTHROPIC_API_KEY" in error.message

    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))  # points at a missing profile: the SDK raises
    client = AnthropicClient(base_url=fake.url)
    error = await model_error(client)
    await client.aclose()
    assert error.kind == "invalid_request" and "Config file not found" in error.message
    assert fake.requests == []


async def test_anthropic_cache_usage_is_reported(fake: FakeModel) -> None:
    fake.reply("cached", usage={"cache_read_input_tokens": 900, "cache_creation_input_tokens": 12})
    client = AnthropicClient(api_key="k", base_url=fake.url)
    _, response = await collect(client)
    await client.aclose()
    assert (response.usage.cache_read_input_tokens, response.usage.cache_creation_input_tokens) == (900, 12)


# -- OpenAI-compatible specifics -------------------------------------------------------------------


async def test_openai_request_is_translated(fake: FakeModel) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
    request = ModelRequest(
        model="qwen3",
        system="You are terse.",
        max_tokens=1000,
        tools=[{"name": "bash", "description": "Run", "input_schema": {"type": "object", "required": ["c"]}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is here?"}, image]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "dropped", "signature": "s"},
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "call_1", "name": "bash", "input": {"c": "ls"}},
                    {"type": "tool_use", "id": "call_2", "name": "bash", "input": {"c": "pwd"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_1",
                        "content": [{"type": "text", "text": "a"}],
                    },
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "denied", "is_error": True},
                    {"type": "text", "text": "Go on"},
                ],
            },
        ],
    )
    client = OpenAICompatClient(fake.openai_url, api_key="sk-test")
    await collect(client, request)
    await client.aclose()

    sent = fake.requests[0]
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer sk-test"
    body = sent.json
    assert body["model"] == "qwen3" and body["max_tokens"] == 1000
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run",
                "parameters": {"type": "object", "required": ["c"]},
            },
        }
    ]
    system, user, assistant, result1, result2, follow_up = body["messages"]
    assert system == {"role": "system", "content": "You are terse."}
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is here?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        ],
    }
    assert assistant["role"] == "assistant" and assistant["content"] == "Looking."
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in assistant["tool_calls"]
    ] == [("call_1", "bash", {"c": "ls"}), ("call_2", "bash", {"c": "pwd"})]
    assert result1 == {"role": "tool", "tool_call_id": "call_1", "content": "a"}
    assert result2 == {"role": "tool", "tool_call_id": "call_2", "content": "Error: denied"}
    assert follow_up == {"role": "user", "content": "Go on"}


async def test_openai_reasoning_field_variant(fake: FakeModel) -> None:
    fake.openai_reasoning_field = "reasoning"
    try:
        fake.reply("yes", thinking="because")
        client = OpenAICompatClient(fake.openai_url)
        _, response = await collect(client)
        await client.aclose()
    finally:
        fake.openai_reasoning_field = "reasoning_content"
    assert response.content == [
        {"type": "thinking", "thinking": "because", "signature": ""},
        {"type": "text", "text": "yes"},
    ]


async def test_openai_cached_prompt_tokens_are_split_out(fake: FakeModel) -> None:
    fake.reply("ok", usage={"input_tokens": 100, "cache_read_input_tokens": 400, "output_tokens": 9})
    client = OpenAICompatClient(fake.openai_url)
    _, response = await collect(client)
    await client.aclose()
    usage = response.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (100, 400, 9)


# -- router ----------------------------------------------------------------------------------------


async def test_router_picks_backend_by_prefix(fake: FakeModel) -> None:
    router = ModelRouter(anthropic_api_key="k", anthropic_base_url=fake.url, openai_base_url=fake.openai_url)
    fake.reply("from openai").reply("from anthropic")
    _, first = await collect(router, ModelRequest(model="openai/qwen3:8b", messages=HELLO.messages))
    _, second = await collect(router, ModelRequest(model="claude-opus-4-7", messages=HELLO.messages))
    await router.aclose()

    openai_call, anthropic_call = fake.requests
    assert (openai_call.path, openai_call.json["model"]) == ("/v1/chat/completions", "qwen3:8b")
    assert (anthropic_call.path, anthropic_call.json["model"]) == ("/v1/messages", "claude-opus-4-7")
    assert first.content[0]["text"] == "from openai" and second.content[0]["text"] == "from anthropic"


async def test_router_without_openai_server_says_how_to_configure(
    fake: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    router = ModelRouter(openai_prefixes=("openai/", "local/"))
    error = await model_error(router, ModelRequest(model="local/llama", messages=HELLO.messages))
    assert error.kind == "invalid_request" and "CORRAL_OPENAI_BASE_URL" in error.message
    assert not router.configured
    assert router.describe().startswith("no model configured: set ANTHROPIC_API_KEY")
    assert fake.requests == []
    await router.aclose()


def test_router_describe_lists_what_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    both = ModelRouter(anthropic_api_key="k", openai_base_url="http://gpu:8000/v1").describe()
    assert "https://api.anthropic.com" in both and "http://gpu:8000/v1" in both and "'openai/'" in both
    assert "ANTHROPIC_API_KEY" in ModelRouter(openai_base_url="http://gpu:8000/v1").describe()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    assert ModelRouter().configured and "CORRAL_OPENAI_BASE_URL" in ModelRouter().describe()


# -- the fake itself -------------------------------------------------------------------------------


async def test_fake_sse_is_accepted_by_the_official_sdk_helpers(fake: FakeModel) -> None:
    fake.reply("Checked.", thinking="careful", tool_use=[("bash", {"command": "ls"})])
    fake.reply("Plain JSON.", tool_use=[("bash", {"command": "pwd"})])
    sdk = anthropic.AsyncAnthropic(api_key="k", base_url=fake.url, max_retries=0)
    async with sdk.messages.stream(model="m", max_tokens=100, messages=HELLO.messages) as stream:
        streamed = await stream.get_final_message()
    plain = await sdk.messages.create(model="m", max_tokens=100, messages=HELLO.messages)
    await sdk.close()
    assert [b.type for b in streamed.content] == ["thinking", "text", "tool_use"]
    assert streamed.content[2].input == {"command": "ls"} and streamed.stop_reason == "tool_use"
    assert streamed.usage.output_tokens == fake.requests[0].usage["output_tokens"]  # type: ignore[index]
    assert plain.content[0].text == "Plain JSON." and plain.content[1].input == {"command": "pwd"}


async def test_fake_openai_non_streaming(fake: FakeModel) -> None:
    fake.reply("hey", tool_use=[("bash", {"command": "ls"})])
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"{fake.openai_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "hey"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"command": "ls"}


async def test_fake_rejects_a_tool_use_without_its_result(model_client: ModelClient, fake: FakeModel) -> None:
    fake.reply("never served")
    request = ModelRequest(
        model="m",
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_x", "name": "b", "input": {}}],
            },
            {"role": "user", "content": "where is the result?"},
        ],
    )
    error = await model_error(model_client, request)
    assert error.kind == "invalid_request" and error.status_code == 400
    assert fake.pending == 1  # a rejected request does not consume the script


async def test_fake_echoes_when_unscripted_and_usage_adds_up(model_client: ModelClient, fake: FakeModel) -> None:
    totals = [0, 0]
    for word in ("alpha", "beta gamma"):
        request = ModelRequest(model="m", messages=[{"role": "user", "content": word}])
        _, response = await collect(model_client, request)
        assert response.content == [{"type": "text", "text": f"echo: {word}"}]
        totals[0] += response.usage.input_tokens
        totals[1] += response.usage.output_tokens
    served = [r.usage for r in fake.requests if r.usage]
    assert totals == [sum(u["input_tokens"] for u in served), sum(u["output_tokens"] for u in served)]


async def test_fake_respond_with_drives_a_multi_turn_conversation(model_client: ModelClient, fake: FakeModel) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        results = tool_results(body)
        if not results:
            return Reply(tool_use=[("bash", {"command": f"echo {last_user_text(body)}"})])
        return Reply(text=f"the tool said {results[0][1]}")

    fake.respond_with(respond)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "ping"}]
    _, first = await collect(model_client, ModelRequest(model="m", messages=messages))
    call = first.content[0]
    assert call["input"] == {"command": "echo ping"}
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "ping"}]},
    ]
    _, second = await collect(model_client, ModelRequest(model="m", messages=messages))
    assert second.content == [{"type": "text", "text": "the tool said ping"}]


def test_fake_is_reachable_from_another_process(fake: FakeModel) -> None:
    fake.reply("across processes")
    code = (
        "import json, sys, urllib.request\n"
        "body = {'model': 'm', 'max_tokens': 10, 'messages': [{'role': 'user', 'content': 'hi'}]}\n"
        "headers = {'x-api-key': 'k', 'content-type': 'application/json'}\n"
        "url = sys.argv[1] + '/v1/messages'\n"
        "req = urllib.request.Request(url, json.dumps(body).encode(), headers, method='POST')\n"
        "print(json.load(urllib.request.urlopen(req))['content'][0]['text'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, fake.url], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "across processes", out.stderr
