"""The agent toolset end to end: the SDK drives a session whose model (the fake) calls the tools, which
run in the session's real sandbox (bubblewrap, and gVisor on a server of its own), provisioned on the
first tool call."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from .conftest import API_KEY
from .fake_model import FakeModel, Reply, tool_results
from .servers import ServerThread, database_url
from .turns import new_session, text, turn, types

TOOLSET = {"type": "agent_toolset_20260401"}


@pytest.fixture(scope="module", params=["bwrap", "gvisor"])
def tools_server(
    request: pytest.FixtureRequest,
    db_kind: str,
    agent_server: ServerThread,
    sandbox_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerThread]:
    """The agent server (bubblewrap), or one like it with `CORRAL_SANDBOX=gvisor` and its own database."""
    if request.param == "bwrap":
        yield agent_server
        return
    tmp: Path = tmp_path_factory.mktemp(f"agents-gvisor-{db_kind}")
    for url in database_url(db_kind, tmp):
        update = {"database_url": url, "sandbox": "gvisor", "data_dir": sandbox_root / f"agents-gvisor-{db_kind}"}
        srv = ServerThread(agent_server.settings.model_copy(update=update)).start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def agents(tools_server: ServerThread) -> anthropic.Anthropic:
    """The SDK pointed at the server whose sandboxes these tests use."""
    return anthropic.Anthropic(base_url=tools_server.url, api_key=API_KEY, max_retries=0)


def sandbox_pool(server: ServerThread) -> Any:
    return next(r.pool for r in server.runtime.tools.runners if hasattr(r, "pool"))


def result_texts(events: list) -> list[tuple[bool, str]]:
    return [
        (bool(e.is_error), "".join(block.text for block in e.content or []))
        for e in events
        if e.type == "agent.tool_result"
    ]


def echo_results(body: dict) -> Reply:
    return Reply(text=" | ".join(result for _, result in tool_results(body)))


def test_tools_run_in_the_sessions_sandbox_and_state_carries_over(
    agents: anthropic.Anthropic, fake: FakeModel, tools_server: ServerThread
) -> None:
    session = new_session(agents, tools=[TOOLSET])
    pool = sandbox_pool(tools_server)
    assert pool.current(session.id) is None  # lazy: nothing provisioned before a tool call
    fake.reply(
        tool_use=[
            ("bash", {"command": "mkdir -p notes && cd notes && export MOOD=calm && echo first > a.txt"}),
            ("bash", {"command": "pwd; echo $MOOD; cat a.txt"}),
        ]
    )
    fake.reply(tool_use=[("write", {"file_path": "/workspace/notes/b.txt", "content": "alpha\nbeta\n"})])
    fake.reply(
        tool_use=[("edit", {"file_path": "/workspace/notes/b.txt", "old_string": "beta", "new_string": "gamma"})]
    )
    fake.reply(tool_use=[("read", {"file_path": "/workspace/notes/b.txt"}), ("glob", {"pattern": "**/*.txt"})])
    fake.respond_with(echo_results)
    seen = turn(agents, session.id, [text("take notes")], timeout=30)
    assert seen[-1].stop_reason.type == "end_turn"
    results = result_texts(seen)
    assert results[1] == (False, "/workspace/notes\ncalm\nfirst")
    assert results[2][0] is False and results[3][0] is False
    assert not results[4][0] and "gamma" in results[4][1] and "beta" not in results[4][1]
    assert "notes/a.txt" in results[5][1] and "notes/b.txt" in results[5][1]
    # Every tool_result answers the tool_use right before it, and the files are on the host workdir.
    uses = [e.id for e in seen if e.type == "agent.tool_use"]
    assert [e.tool_use_id for e in seen if e.type == "agent.tool_result"] == uses
    assert (pool.workdir_for(session.id) / "notes" / "b.txt").read_text() == "alpha\ngamma\n"


def test_sandbox_hides_the_servers_secrets_and_files(
    agents: anthropic.Anthropic, fake: FakeModel, tools_server: ServerThread
) -> None:
    session = new_session(agents, tools=[TOOLSET])
    database = tools_server.settings.database_url
    probe = "env; cat /etc/shadow; ls /root; ps -e -o pid,comm"
    if not database.startswith("postgresql"):
        probe += f"; cat {database}"
    fake.reply(tool_use=[("bash", {"command": probe})])
    fake.respond_with(echo_results)
    seen = turn(agents, session.id, [text("look around")], timeout=30)
    ((_, output),) = result_texts(seen)
    assert "test-key-7f3a" not in output and "fake-key" not in output  # API key, ANTHROPIC_API_KEY
    assert "ANTHROPIC" not in output and "CORRAL" not in output
    assert "root:" not in output and "SQLite format" not in output
    processes = [line.split() for line in output.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert processes and all(int(p[0]) < 100 for p in processes)  # its own PID namespace


def test_a_killed_sandbox_is_an_error_result_and_the_next_call_gets_a_fresh_one(
    agents: anthropic.Anthropic, fake: FakeModel, tools_server: ServerThread
) -> None:
    session = new_session(agents, tools=[TOOLSET])
    pool = sandbox_pool(tools_server)
    fake.reply(tool_use=[("bash", {"command": "echo kept > kept.txt; echo $$"})])
    fake.reply(tool_use=[("bash", {"command": "sleep 30"})])
    fake.reply(tool_use=[("bash", {"command": "cat kept.txt"})])
    fake.respond_with(echo_results)
    with agents.beta.sessions.events.stream(session.id, timeout=40) as stream:
        agents.beta.sessions.events.send(session.id, events=[text("work")])
        seen = []
        killed = False
        for event in stream:
            seen.append(event)
            if event.type == "agent.tool_use" and event.input.get("command") == "sleep 30" and not killed:
                sandbox = pool.current(session.id)
                time.sleep(0.3)  # let the call start inside the sandbox
                os.killpg(sandbox._proc.pid, signal.SIGKILL)
                killed = True
            if event.type == "session.status_idle":
                break
    results = result_texts(seen)
    assert results[1][0] is True and "sandbox died" in results[1][1]
    assert results[2] == (False, "kept")  # a fresh sandbox, the same workdir
    assert seen[-1].stop_reason.type == "end_turn"


def test_confirmed_tool_call_runs_after_allow(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    toolset = {"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}
    session = new_session(agents, tools=[toolset])
    fake.reply(tool_use=[("write", {"file_path": "/workspace/ok.txt", "content": "approved"})])
    fake.reply(tool_use=[("read", {"file_path": "/workspace/ok.txt"})])
    fake.respond_with(echo_results)
    first = turn(agents, session.id, [text("write it")])
    use = next(e for e in first if e.type == "agent.tool_use")
    assert first[-1].stop_reason.type == "requires_action" and "agent.tool_result" not in types(first)
    allow = {"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}
    second = turn(agents, session.id, [allow])
    assert result_texts(second)[0][0] is False  # the write ran
    read_use = next(e for e in second if e.type == "agent.tool_use" and e.name == "read")
    third = turn(
        agents, session.id, [{"type": "user.tool_confirmation", "tool_use_id": read_use.id, "result": "allow"}]
    )
    assert "approved" in result_texts(third)[0][1]


def test_the_environments_networking_governs_the_sandboxs_egress(
    agents: anthropic.Anthropic, fake: FakeModel, tools_server: ServerThread
) -> None:
    """`limited` refuses what allowed_hosts does not list, with a 403 the agent can read; whatever the
    policy, the proxy never opens the host's loopback (here: the corral API itself)."""
    agent = agents.beta.agents.create(name="egress", model="claude-sonnet-4-6", tools=[TOOLSET])
    limited = agents.beta.environments.create(
        name=f"env-limited-{time.time_ns()}",
        config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]}},
    )
    session = agents.beta.sessions.create(agent=agent.id, environment_id=limited.id)
    fetch = "curl -sS http://blocked.example/data; curl -sS https://pypi.org/ 2>&1"
    fake.reply(tool_use=[("bash", {"command": fetch})])
    fake.respond_with(echo_results)
    ((failed, output),) = result_texts(turn(agents, session.id, [text("fetch")], timeout=30))
    assert "blocked.example is not in its allowed_hosts (api.example.com)" in output
    assert "CONNECT tunnel failed, response 403" in output and failed

    api = f"http://127.0.0.1:{tools_server.port}/health"
    session = new_session(agents, tools=[TOOLSET])  # unrestricted
    fake.reply(tool_use=[("bash", {"command": f"curl -sS {api}; curl -sS --noproxy '' {api}"})])
    fake.respond_with(echo_results)
    ((_, output),) = result_texts(turn(agents, session.id, [text("poke the host")], timeout=30))
    assert "Couldn't connect to server" in output  # direct: the sandbox's own loopback
    assert "127.0.0.1 is a loopback address" in output  # through the proxy: refused
    assert '"status"' not in output


def test_deleting_a_session_removes_its_sandbox_and_files(
    agents: anthropic.Anthropic, fake: FakeModel, tools_server: ServerThread
) -> None:
    session = new_session(agents, tools=[TOOLSET])
    pool = sandbox_pool(tools_server)
    fake.reply(tool_use=[("bash", {"command": "echo private > notes.txt"})])
    fake.respond_with(echo_results)
    turn(agents, session.id, [text("write")], timeout=30)
    workdir = pool.workdir_for(session.id)
    assert (workdir / "notes.txt").read_text() == "private\n" and pool.current(session.id) is not None
    agents.beta.sessions.delete(session.id)
    assert pool.current(session.id) is None
    assert not workdir.parent.exists()
