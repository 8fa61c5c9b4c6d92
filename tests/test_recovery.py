"""Crash safety: real `corral worker` processes are killed with SIGKILL mid-turn, and the turn carries
on by itself in another worker, with no event lost or duplicated and no tool run twice.

Each test runs the API in this process (no workers) and workers as child processes on the same
database. A worker started with `CORRAL_CRASH_AT=<point>` kills itself there (harness/crashpoints.py);
the next worker claims the session once the dead one's lease expires. The model is the scripted fake,
answering from the request so a re-issued call gets the same answer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from corral.config import Settings

from .conftest import API_KEY
from .fake_model import FakeModel, Reply, tool_results
from .mcp_server import MCPTestServer
from .servers import ServerThread, database_url
from .turns import new_session, text, turn, wait_for

LEASE_SECONDS = 1.0
SIDE_EFFECT = "echo ran >> side.txt; wc -l < side.txt"


class Cluster:
    """An API server (no workers) and a way to start worker processes on its database."""

    def __init__(self, server: ServerThread, database: str, data_dir: Path, fake: FakeModel) -> None:
        self.server = server
        self.database = database
        self.data_dir = data_dir
        self.fake = fake
        self.client = anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0)
        self.workers: list[subprocess.Popen[bytes]] = []

    def worker(self, crash_at: str | None = None) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CORRAL_DATABASE_URL": self.database,
            "CORRAL_DATA_DIR": str(self.data_dir),
            "CORRAL_WORKERS": "4",
            "CORRAL_LEASE_SECONDS": str(LEASE_SECONDS),
            "CORRAL_POLL_INTERVAL": "0.1",
            "ANTHROPIC_BASE_URL": self.fake.url,
            "ANTHROPIC_API_KEY": "fake-key",
        }
        env.pop("CORRAL_CRASH_AT", None)
        if crash_at:
            env["CORRAL_CRASH_AT"] = crash_at
        proc = subprocess.Popen(
            [sys.executable, "-c", "from corral.cli import main; main()", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.workers.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()
        self.workers.clear()


@pytest.fixture(scope="module")
def cluster_base(
    db_kind: str, fake: FakeModel, sandbox_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, str, Path]]:
    data_dir = sandbox_root / f"recovery-{db_kind}"
    for url in database_url(db_kind, data_dir if db_kind == "sqlite" else tmp_path_factory.mktemp("unused")):
        if db_kind == "sqlite":
            data_dir.mkdir(parents=True, exist_ok=True)
        settings = Settings(database_url=url, api_key=API_KEY, data_dir=data_dir, workers=0, poll_interval=0.05)
        server = ServerThread(settings).start()
        try:
            yield server, url, data_dir
        finally:
            server.stop()


@pytest.fixture
def cluster(cluster_base: tuple[ServerThread, str, Path], fake: FakeModel) -> Iterator[Cluster]:
    c = Cluster(*cluster_base, fake)
    yield c
    c.stop_all()


def bash_then_answer(body: dict[str, Any]) -> Reply:
    """First call of a turn: run the side-effecting command; once a result is in: answer with it."""
    results = tool_results(body)
    if results:
        return Reply(text="result: " + " | ".join(r for _, r in results))
    return Reply(tool_use=[("bash", {"command": SIDE_EFFECT})])


def wait_idle(client: anthropic.Anthropic, session_id: str, timeout: float = 90.0) -> list[Any]:
    def settled() -> list[Any] | None:
        events = list(client.beta.sessions.events.list(session_id, limit=1000))
        if events and events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "end_turn":
            return events
        return None

    return wait_for(settled, timeout=timeout, interval=0.1)


def assert_log_is_whole(events: list[Any]) -> None:
    """No duplicates; every model span closed once; every tool use answered once; input processed."""
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "duplicated event ids"
    open_spans = 0
    for event in events:
        if event.type == "span.model_request_start":
            assert open_spans == 0, "a span started inside another"
            open_spans += 1
        elif event.type == "span.model_request_end":
            assert open_spans == 1, "a span ended twice or without a start"
            open_spans -= 1
    assert open_spans == 0
    uses = [e.id for e in events if e.type in ("agent.tool_use", "agent.mcp_tool_use")]
    answered = Counter(e.tool_use_id for e in events if e.type == "agent.tool_result")
    answered.update(e.mcp_tool_use_id for e in events if e.type == "agent.mcp_tool_result")
    assert all(answered[u] == 1 for u in uses) and sum(answered.values()) == len(uses)
    assert all(e.processed_at is not None for e in events if e.type == "user.message")


def side_effect_runs(cluster: Cluster, session_id: str) -> int:
    path = cluster.data_dir / "sandboxes" / "sessions" / session_id / "workspace" / "side.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize(
    ("point", "runs"),
    [
        ("after_model_start", 1),  # span open, request not sent: re-issued
        ("before_model_end", 1),  # the model answered, nothing recorded: re-issued
        ("after_model_end", 1),  # tool_use recorded, not started: runs once, in the next worker
        ("after_tool_start", 0),  # started, no result: answered as interrupted, never re-run
        ("after_tool_result", 1),  # result recorded: the next worker goes on to the model
    ],
)
def test_killed_worker_the_turn_carries_on_by_itself(cluster: Cluster, fake: FakeModel, point: str, runs: int) -> None:
    fake.respond_with(bash_then_answer)
    session = new_session(cluster.client, tools=[{"type": "agent_toolset_20260401"}])
    doomed = cluster.worker(crash_at=point)
    cluster.client.beta.sessions.events.send(session.id, events=[text("go")])
    assert doomed.wait(timeout=30) == -signal.SIGKILL
    cluster.worker()  # nobody touches the session: the new worker finds it once the lease expires
    events = wait_idle(cluster.client, session.id)
    assert_log_is_whole(events)
    assert side_effect_runs(cluster, session.id) == runs
    results = [e for e in events if e.type == "agent.tool_result"]
    assert len(results) == 1
    if runs == 0:
        assert results[0].is_error and "not re-run" in results[0].content[0].text
    else:
        assert not results[0].is_error and results[0].content[0].text.strip() == "1"
    answer = next(e for e in reversed(events) if e.type == "agent.message")
    assert answer.content[0].text.startswith("result: ")
    if point in ("after_model_start", "before_model_end"):
        ends = [e for e in events if e.type == "span.model_request_end"]
        assert ends[0].is_error and not ends[-1].is_error  # the lost call is closed as failed, then re-made
    assert [e.type for e in events].count("user.message") == 1


@pytest.mark.parametrize(("point", "runs"), [("after_model_end", 1), ("after_tool_start", 0)])
def test_killed_worker_an_mcp_call_is_never_made_twice(
    cluster: Cluster, fake: FakeModel, point: str, runs: int
) -> None:
    """An MCP call follows the sandbox tools' rule: begun and unanswered means answered as interrupted."""
    marker = f"once {time.time_ns()}"

    def shout_then_answer(body: dict[str, Any]) -> Reply:
        results = tool_results(body)
        if results:
            return Reply(text="result: " + " | ".join(r for _, r in results))
        return Reply(tool_use=[("mcp__tools__shout", {"text": marker})])

    with MCPTestServer() as mcp:
        client = cluster.client
        vault = client.beta.vaults.create(display_name="recovery")
        client.beta.vaults.credentials.create(
            vault.id, auth={"type": "static_bearer", "mcp_server_url": mcp.url("r"), "token": mcp.new_token()}
        )
        agent = client.beta.agents.create(
            name="mcp recovery",
            model="claude-sonnet-4-6",
            mcp_servers=[{"type": "url", "name": "tools", "url": mcp.url("r")}],
            tools=[
                {
                    "type": "mcp_toolset",
                    "mcp_server_name": "tools",
                    "default_config": {"permission_policy": {"type": "always_allow"}},
                }
            ],
        )
        env = client.beta.environments.create(name=f"env-{time.time_ns()}")
        session = client.beta.sessions.create(agent=agent.id, environment_id=env.id, vault_ids=[vault.id])
        fake.respond_with(shout_then_answer)
        doomed = cluster.worker(crash_at=point)
        client.beta.sessions.events.send(session.id, events=[text("go")])
        assert doomed.wait(timeout=30) == -signal.SIGKILL
        cluster.worker()
        events = wait_idle(client, session.id)  # the new worker imports the mcp SDK: slow under load
        assert_log_is_whole(events)
        assert mcp.calls.count(("shout", {"text": marker})) == runs
    (result,) = [e for e in events if e.type == "agent.mcp_tool_result"]
    if runs == 0:
        assert result.is_error and "not re-run" in result.content[0].text
    else:
        assert not result.is_error and result.content[0].text == marker.upper()


def test_random_kills_during_a_long_turn_lose_nothing(cluster: Cluster, fake: FakeModel) -> None:
    """Kill workers at random moments through a turn of many steps; every step happens at most once."""
    steps = 8

    def counting(body: dict[str, Any]) -> Reply:
        done = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        if done >= steps:
            return Reply(text="finished")
        return Reply(tool_use=[("bash", {"command": f"echo step{done} >> steps.txt"})], delay=0.05)

    fake.respond_with(counting)
    session = new_session(cluster.client, tools=[{"type": "agent_toolset_20260401"}])
    cluster.client.beta.sessions.events.send(session.id, events=[text("count")])
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        worker = cluster.worker()
        time.sleep(rng.uniform(0.6, 2.5))  # the worker starts (~1 s), claims, works, then dies
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        kills += 1
        last = list(cluster.client.beta.sessions.events.list(session.id, limit=1, order="desc"))
        if (last and last[0].type == "session.status_idle") or kills >= 6:
            break
    cluster.worker()
    events = wait_idle(cluster.client, session.id, timeout=60)
    assert_log_is_whole(events)
    path = cluster.data_dir / "sandboxes" / "sessions" / session.id / "workspace" / "steps.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    assert len(lines) == len(set(lines)), f"a tool ran twice: {lines}"
    results = [e for e in events if e.type == "agent.tool_result"]
    ran = sum(1 for r in results if not r.is_error)
    assert ran <= len(lines)  # every successful result matches a real run
    assert next(e for e in reversed(events) if e.type == "agent.message").content[0].text == "finished"
    assert kills >= 2, "the turn finished before any worker was killed: nothing was tested"


def test_a_worker_processes_events_reach_the_api_servers_streams_in_order(cluster: Cluster, fake: FakeModel) -> None:
    """Events appended in another process arrive on this process's SSE stream (NOTIFY or polling)."""
    fake.respond_with(bash_then_answer)
    session = new_session(cluster.client, tools=[{"type": "agent_toolset_20260401"}])
    cluster.worker()
    seen = turn(cluster.client, session.id, [text("go")], timeout=40)
    listed = list(cluster.client.beta.sessions.events.list(session.id, limit=1000))
    assert [e.id for e in seen] == [e.id for e in listed]
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"
    assert "agent.tool_result" in [e.type for e in seen]
