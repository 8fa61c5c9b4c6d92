"""Time to the first agent event, with lazy and eager sandbox provisioning (part of bench_sandbox.py).

A real corral server (in this process, SQLite, `CORRAL_SANDBOX_PREWARM=0` so every session starts its own
sandbox) and the scripted fake model. For each new session whose agent has the agent toolset, the SDK
opens the event stream, sends a `user.message` and records when the first `agent.*` event arrives (the
model's `agent.tool_use` for `bash true`), when its `agent.tool_result` arrives (the sandbox has run the
call), and the turn's end. With `lazy` the sandbox starts when the tool call arrives; with `eager` it
starts beside the turn's first model call. The fake model answers at once or, to look like a real
model, waits `model_delay` seconds before each streamed chunk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _benchlib  # noqa: F401  (puts the repository root on sys.path for tests.*)
import anthropic
from tests.fake_model import FakeModel
from tests.servers import ServerThread, database_url

from corral.config import Settings

API_KEY = "bench-key"
TOOLSET = {"type": "agent_toolset_20260401"}


def _one_turn(client: anthropic.Anthropic, agent_id: str, env_id: str) -> tuple[float, float, float]:
    session = client.beta.sessions.create(agent=agent_id, environment_id=env_id)
    first = result = float("nan")
    with client.beta.sessions.events.stream(session.id, timeout=60) as stream:
        t0 = time.perf_counter()
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "go"}]}]
        )
        for event in stream:
            now = time.perf_counter() - t0
            if event.type.startswith("agent.") and first != first:
                first = now
            if event.type == "agent.tool_result" and result != result:
                if event.is_error:
                    raise RuntimeError(f"tool call failed: {event.content}")
                result = now
            if event.type == "session.status_idle":
                return first, result, now
    raise RuntimeError("the stream ended before the turn did")


def measure(backend: str, mode: str, n: int, model_delay: float, root: Path) -> list[tuple[str, str, list[float]]]:
    """Rows (label, operation, samples in seconds) for `n` sessions on a fresh server."""
    rows: dict[str, list[float]] = {"first agent event": [], "first tool_result": [], "turn done": []}
    with FakeModel() as fake, tempfile.TemporaryDirectory() as tmp:
        for url in database_url("sqlite", Path(tmp)):
            settings = Settings(
                database_url=url,
                api_key=API_KEY,
                data_dir=root / f"first-{backend}-{mode}-{model_delay}",
                workers=2,
                poll_interval=0.1,
                anthropic_base_url=fake.url,
                anthropic_api_key="fake-key",
                sandbox=backend,
                sandbox_provision=mode,
                sandbox_prewarm=0,
            )
            server = ServerThread(settings).start()
            try:
                client = anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0)
                agent = client.beta.agents.create(name="bench", model="claude-sonnet-4-6", tools=[TOOLSET])
                env = client.beta.environments.create(name=f"bench-{backend}-{mode}-{time.time_ns()}")
                for i in range(n + 1):  # the first warms the server up and is not counted
                    fake.reply(tool_use=[("bash", {"command": "true"})], delay=model_delay)
                    fake.reply("done", delay=model_delay)
                    first, result, done = _one_turn(client, agent.id, env.id)
                    if i:
                        rows["first agent event"].append(first)
                        rows["first tool_result"].append(result)
                        rows["turn done"].append(done)
            finally:
                server.stop()
    label = f"{backend} {mode}" + (f", model +{model_delay * 1000:g} ms/chunk" if model_delay else "")
    return [(label, op, samples) for op, samples in rows.items()]
