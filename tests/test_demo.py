"""The first-run experience: the offline `corral-demo` model, `examples/demo-agent.yaml` and `corral demo`,
against a real server with no model backend configured at all (no ANTHROPIC_* settings, no OpenAI server);
tool calls run in the session's real bubblewrap sandbox."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
import yaml

from corral.config import Settings
from corral.demo import DEMO_AGENT
from corral.models.base import BlockStart, ModelRequest, ModelResponse, TextDelta
from corral.models.router import ModelRouter
from corral.schemas.agents import AgentCreate
from corral.tools.toolset import TOOLS

from .servers import ServerThread
from .turns import new_session, text, turn, types, wait_for

KEY = "demo-test-key"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASH = TOOLS["bash"].tool_definition()


def _settings(tmp: Path, data_dir: Path, workers: int) -> Settings:
    return Settings(
        database_url=str(tmp / "corral.db"),
        api_key=KEY,
        data_dir=data_dir,
        workers=workers,
        poll_interval=0.1,
        sse_ping_seconds=1.0,
        anthropic_api_key=None,
        anthropic_base_url=None,
        openai_base_url=None,
        openai_api_key=None,
    )


@pytest.fixture(scope="module")
def demo_server(sandbox_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(_settings(tmp_path_factory.mktemp("demo"), sandbox_root / "demo", workers=2)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def demo(demo_server: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=demo_server.url, api_key=KEY, max_retries=0)


def no_model_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CORRAL_"))}
    return {**env, **extra}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        env=env if env is not None else no_model_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def message_text(event) -> str:
    return "".join(block.text for block in event.content)


# -- the model on its own --------------------------------------------------------------------------


async def collect(router: ModelRouter, request: ModelRequest) -> tuple[list, ModelResponse]:
    items = [item async for item in router.stream(request)]
    assert isinstance(items[-1], ModelResponse) and not any(isinstance(i, ModelResponse) for i in items[:-1])
    return items[:-1], items[-1]


async def test_demo_model_calls_bash_then_summarizes_without_any_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    router = ModelRouter()
    assert not router.configured and "corral demo" in router.describe()
    ask = {"role": "user", "content": [{"type": "text", "text": "what's  here?\nit's me"}]}

    items, first = await collect(router, ModelRequest(model="corral-demo", messages=[ask], tools=[BASH]))
    assert first.stop_reason == "tool_use" and first.model == "corral-demo"
    assert [b["type"] for b in first.content] == ["text", "tool_use"]
    use = first.content[1]
    assert use["name"] == "bash" and use["id"].startswith("toolu_")
    assert use["input"]["command"].startswith("echo 'You said: what'\"'\"'s here? it'\"'\"'s me';")
    assert [i.kind for i in items if isinstance(i, BlockStart)] == ["text", "tool_use"]
    deltas = [i.text for i in items if isinstance(i, TextDelta)]
    assert len(deltas) > 5 and "".join(deltas) == first.content[0]["text"]
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    output = "\n".join(f"line {n}" for n in range(1, 11))
    result = {"type": "tool_result", "tool_use_id": use["id"], "content": [{"type": "text", "text": output}]}
    history = [ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    _, second = await collect(router, ModelRequest(model="corral-demo-mini", messages=history, tools=[BASH]))
    answer = second.content[0]["text"]
    assert second.stop_reason == "end_turn" and [b["type"] for b in second.content] == ["text"]
    assert "line 1\n" in answer and "line 6\n" in answer and "line 7" not in answer and "4 more lines" in answer
    assert second.usage.input_tokens > first.usage.input_tokens

    _, plain = await collect(router, ModelRequest(model="corral-demo", messages=[ask]))
    assert plain.stop_reason == "end_turn" and [b["type"] for b in plain.content] == ["text"]
    words = plain.content[0]["text"]
    assert "offline demo model" in words and "ANTHROPIC_API_KEY" in words and "CORRAL_OPENAI_BASE_URL" in words
    assert "openai/" in words
    assert router._anthropic is None and router._openai is None  # no real backend was even built
    await router.aclose()


# -- a session through the SDK ---------------------------------------------------------------------


def test_the_example_agent_runs_a_session_end_to_end(demo: anthropic.Anthropic) -> None:
    definition = yaml.safe_load((EXAMPLES / "demo-agent.yaml").read_text())
    agent = demo.beta.agents.create(**definition)
    assert agent.model.id == "corral-demo"
    env = demo.beta.environments.create(name=f"demo-{os.getpid()}")
    session = demo.beta.sessions.create(agent=agent.id, environment_id=env.id)

    seen = turn(demo, session.id, [text("show me around")], deltas=["agent.message"], timeout=60)
    assert [t for t in types(seen) if not t.startswith("event_")] == [
        "user.message", "session.status_running", "span.model_request_start", "agent.message", "agent.tool_use",
        "span.model_request_end", "agent.tool_result", "span.model_request_start", "agent.message",
        "span.model_request_end", "session.status_idle",
    ]  # fmt: skip
    assert seen[-1].stop_reason.type == "end_turn"
    use = next(e for e in seen if e.type == "agent.tool_use")
    assert use.name == "bash" and use.evaluated_permission == "allow"
    assert use.input["command"].startswith("echo 'You said: show me around';")
    result = next(e for e in seen if e.type == "agent.tool_result")
    assert result.tool_use_id == use.id and not result.is_error
    output = message_text(result).splitlines()
    # It ran in the bubblewrap sandbox: the session's workdir is mounted at /workspace there.
    assert output[:2] == ["You said: show me around", "/workspace"]
    assert any(line.startswith("Linux ") for line in output)
    messages = [e for e in seen if e.type == "agent.message"]
    answer = message_text(messages[-1])
    assert "You said: show me around\n/workspace\n" in answer and "Linux " in answer
    for message in messages:  # both messages streamed as previews first
        deltas = [e.delta.content.text for e in seen if e.type == "event_delta" and e.event_id == message.id]
        assert len(deltas) > 3 and "".join(deltas) == message_text(message)

    ends = [e for e in seen if e.type == "span.model_request_end"]
    assert all(not e.is_error and e.model_usage.input_tokens > 0 and e.model_usage.output_tokens > 0 for e in ends)
    assert ends[1].model_usage.input_tokens > ends[0].model_usage.input_tokens
    total_in = sum(e.model_usage.input_tokens for e in ends)
    total_out = sum(e.model_usage.output_tokens for e in ends)
    after = wait_for(lambda: (s := demo.beta.sessions.retrieve(session.id)).usage.output_tokens == total_out and s)
    assert after.usage.input_tokens == total_in

    again = turn(demo, session.id, [text("once more")], timeout=60)  # history carries over; a new call
    repeat = next(e for e in again if e.type == "agent.tool_use")
    assert repeat.input["command"].startswith("echo 'You said: once more';")
    assert "You said: once more" in message_text([e for e in again if e.type == "agent.message"][-1])
    assert again[-1].stop_reason.type == "end_turn"


def test_without_tools_the_demo_model_says_how_to_configure_a_real_one(demo: anthropic.Anthropic) -> None:
    session = new_session(demo, model="corral-demo")
    seen = turn(demo, session.id, [text("hello?")])
    assert types(seen) == [
        "user.message", "session.status_running", "span.model_request_start", "agent.message",
        "span.model_request_end", "session.status_idle",
    ]  # fmt: skip
    words = message_text(seen[3])
    assert 'You said: "hello?"' in words and "offline demo model" in words
    assert "ANTHROPIC_API_KEY" in words and "CORRAL_OPENAI_BASE_URL" in words
    assert seen[-1].stop_reason.type == "end_turn"


# -- the example files -----------------------------------------------------------------------------


def test_example_files_match_the_builtin_demo_agent() -> None:
    assert yaml.safe_load((EXAMPLES / "demo-agent.yaml").read_text()) == DEMO_AGENT
    claude = yaml.safe_load((EXAMPLES / "claude-agent.yaml").read_text())
    AgentCreate.model_validate(claude)
    assert claude["model"] == "claude-sonnet-4-6" and claude["tools"] == DEMO_AGENT["tools"]


# -- `corral demo` ---------------------------------------------------------------------------------


def test_corral_demo_prints_the_session_and_reuses_its_agent(demo_server: ServerThread) -> None:
    env = no_model_env(CORRAL_API_KEY=KEY)
    first = run_cli("demo", "--url", demo_server.url, "--message", "hello from the cli", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    lines = out.splitlines()
    command = "echo 'You said: hello from the cli'; pwd; ls -la; uname -a"
    assert re.search(rf"^agent\.tool_use +bash: \$ {re.escape(command)}$", out, re.M)
    result_at = next(i for i, line in enumerate(lines) if line.startswith("agent.tool_result"))
    assert lines[result_at].split(None, 1)[1] == "You said: hello from the cli"
    assert lines[result_at + 1].strip() == "/workspace"
    answer_at = max(i for i, line in enumerate(lines) if line.startswith("agent.message"))
    assert answer_at > result_at and "The command ran in the session's sandbox" in lines[answer_at]
    assert "You said: hello from the cli" in "\n".join(lines[answer_at:])
    assert re.search(r"^span\.model_request_end +\d+ input / \d+ output tokens$", out, re.M)
    assert re.search(r"^session\.status_idle +stop_reason: end_turn$", out, re.M)
    assert "claude-sonnet-4-6" in out  # how to switch to a real model

    second = run_cli("demo", "--url", demo_server.url, "--api-key", KEY, env=no_model_env())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "You said: Hello! What is in your workspace?" in second.stdout

    def header(output: str) -> tuple[str, ...]:
        found = re.search(r"^agent (agent_\w+) .*version (\d+)\)\nenvironment (env_\w+) ", output, re.M)
        assert found, output
        return found.groups()

    assert header(first.stdout) == header(second.stdout)  # the same agent (no new version) and environment


def test_corral_demo_explains_what_went_wrong(demo_server: ServerThread, sandbox_root: Path, tmp_path: Path) -> None:
    refused = run_cli("demo", "--url", demo_server.url, "--api-key", "wrong")
    assert refused.returncode == 1 and "CORRAL_API_KEY" in refused.stderr

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    unreachable = run_cli("demo", "--url", f"http://127.0.0.1:{closed_port}")
    assert unreachable.returncode == 1 and "corral serve" in unreachable.stderr

    api_only = ServerThread(_settings(tmp_path, sandbox_root / "demo-api-only", workers=0)).start()
    try:
        stuck = run_cli("demo", "--url", api_only.url, "--api-key", KEY, "--timeout", "2")
    finally:
        api_only.stop()
    assert stuck.returncode == 1 and "did not go idle within 2 s" in stuck.stderr
    assert "user.message" in stuck.stdout
