"""`github_repository` session resources: the API (tokens write-only), and end to end: the repository is
cloned inside the session's real sandbox when it is provisioned, by git through the egress proxy, which
adds the token for that repository only; the agent commits, pushes and pulls against a local HTTPS git
server (`git http-backend` behind a token check); failures are `session.error` events and error results."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.beta.sessions import BetaManagedAgentsGitHubRepositoryResource

from .conftest import API_KEY
from .fake_model import FakeModel, Reply, tool_results
from .tls_servers import GitServer
from .turns import text, turn
from .wire import assert_exact

TOOLSET = {"type": "agent_toolset_20260401"}
HEADERS = {"anthropic-beta": "managed-agents-2026-04-01", "x-api-key": API_KEY}
GIT = "git -c user.name=Agent -c user.email=agent@example.com"


def echo_results(body: dict) -> Reply:
    return Reply(text=" | ".join(result for _, result in tool_results(body)))


def run(client: anthropic.Anthropic, fake: FakeModel, session_id: str, *commands: str) -> list[Any]:
    for command in commands:
        fake.reply(tool_use=[("bash", {"command": command})])
    fake.respond_with(echo_results)
    return turn(client, session_id, [text("work on the repository")], timeout=90)


def results(events: list[Any]) -> list[tuple[bool, str]]:
    return [
        (bool(e.is_error), "".join(b.text for b in e.content or [])) for e in events if e.type == "agent.tool_result"
    ]


def new_session(client: anthropic.Anthropic, resources: list[dict[str, Any]]) -> Any:
    agent = client.beta.agents.create(name="git", model="claude-sonnet-4-6", tools=[TOOLSET])
    env = client.beta.environments.create(name=f"env-{uuid.uuid4().hex[:10]}")
    return client.beta.sessions.create(agent=agent.id, environment_id=env.id, resources=resources)


def everything_said(client: anthropic.Anthropic, session_id: str) -> str:
    """Every event of the session and the session itself, as JSON."""
    events = [e.model_dump_json() for e in client.beta.sessions.events.list(session_id, limit=1000)]
    return "\n".join([*events, client.beta.sessions.retrieve(session_id).model_dump_json()])


# ---- the API ---------------------------------------------------------------------------------------


def test_repository_resources_keep_their_token_write_only(client: anthropic.Anthropic, agent, environment) -> None:
    token, new_token = f"ghp_{uuid.uuid4().hex}", f"ghp_{uuid.uuid4().hex}"
    repo = {"type": "github_repository", "url": "https://git.example.com/team/app.git", "authorization_token": token}
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[repo, {**repo, "checkout": {"type": "branch", "name": "dev"}, "mount_path": "/workspace/dev"}],
    )
    first, second = session.resources
    assert first.type == "github_repository" and first.mount_path == "/workspace/app" and first.checkout is None
    assert second.checkout.name == "dev" and second.mount_path == "/workspace/dev"  # type: ignore[union-attr]
    raw = client.beta.sessions.resources.with_raw_response.retrieve(first.id, session_id=session.id)
    assert_exact(BetaManagedAgentsGitHubRepositoryResource, raw.http_response.json())
    updated = client.beta.sessions.resources.update(first.id, session_id=session.id, authorization_token=new_token)
    assert updated.id == first.id and updated.updated_at > first.updated_at
    added = client.beta.sessions.resources.with_raw_response.retrieve(second.id, session_id=session.id)
    url = f"{str(client.base_url).rstrip('/')}/v1/sessions/{session.id}/resources"
    pinned = {**repo, "checkout": {"type": "commit", "sha": "a" * 40}, "mount_path": "/workspace/pinned"}
    response = httpx.post(url, json=pinned, headers=HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["checkout"] == {"type": "commit", "sha": "a" * 40}
    seen = [
        raw.http_response.text,
        added.http_response.text,
        response.text,
        client.beta.sessions.resources.with_raw_response.list(session.id).http_response.text,
        client.beta.sessions.with_raw_response.retrieve(session.id).http_response.text,
        everything_said(client, session.id),
    ]
    assert all(token not in s and new_token not in s for s in seen)
    client.beta.sessions.resources.delete(first.id, session_id=session.id)
    assert [r.id for r in client.beta.sessions.resources.list(session.id)] == [second.id, response.json()["id"]]
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.resources.update(second.id, session_id=session.id, authorization_token="")


# ---- end to end ------------------------------------------------------------------------------------


def test_the_agent_clones_commits_pushes_and_pulls_without_ever_seeing_the_token(
    egress_client: anthropic.Anthropic, fake: FakeModel, git_server: GitServer
) -> None:
    name = f"team/app-{uuid.uuid4().hex[:6]}.git"
    bare = git_server.make_repo(name, {"README.md": "hello from the server\n"})
    git_server.requests.clear()
    url = f"{git_server.url()}/{name}"
    session = new_session(
        egress_client, [{"type": "github_repository", "url": url, "authorization_token": git_server.token}]
    )
    repo = "/workspace/" + name.rsplit("/", 1)[1].removesuffix(".git")
    seen = run(
        egress_client,
        fake,
        session.id,
        f"cat {repo}/README.md; git -C {repo} remote get-url origin; cat {repo}/.git/config; env; "
        f"curl -s -o /dev/null {git_server.url()}/team/other.git/info/refs",  # same host, another path
        f"cd {repo} && echo change > agent.txt && git add agent.txt && {GIT} commit -qm 'agent commit' "
        "&& git push -q origin main 2>&1 && echo pushed",
    )
    (ok1, look), (ok2, push) = results(seen)
    assert not ok1 and "hello from the server" in look and url in look
    assert not ok2 and push.strip().endswith("pushed"), push
    assert git_server.log(bare).splitlines()[0] == "agent commit"  # the push arrived

    # A commit made on the server side reaches the sandbox with git pull.
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["git", "clone", "-q", str(bare), work], check=True)
        Path(work, "server.txt").write_text("from upstream\n")
        git = ["git", "-C", work, "-c", "user.name=S", "-c", "user.email=s@example.com"]
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "server commit"], check=True)
        subprocess.run([*git, "push", "-q", "origin", "main"], check=True)
    ((failed, pulled),) = results(
        run(egress_client, fake, session.id, f"cd {repo} && git pull -q 2>&1; cat server.txt")
    )
    assert not failed and "from upstream" in pulled
    assert git_server.token not in everything_said(egress_client, session.id)
    # The token went with the repository's requests only, not to another path on the same host.
    assert any(r["authorization"] for r in git_server.requests)
    assert all(r["path"].startswith("/" + name) for r in git_server.requests if r["authorization"])
    assert [r["authorization"] for r in git_server.requests if r["path"].startswith("/team/other.git")] == [None]


def test_clone_failures_are_session_errors_and_a_token_update_retries(
    egress_client: anthropic.Anthropic, fake: FakeModel, git_server: GitServer
) -> None:
    name = f"team/locked-{uuid.uuid4().hex[:6]}.git"
    git_server.make_repo(name, {"a.txt": "locked\n"})
    url = f"{git_server.url()}/{name}"
    session = new_session(egress_client, [{"type": "github_repository", "url": url, "authorization_token": "wrong"}])
    seen = run(egress_client, fake, session.id, "echo first", "echo second")
    errors = [e for e in seen if e.type == "session.error"]
    assert [e.error.type for e in errors] == ["repository_authentication_error"]
    assert errors[0].error.repository_url == url and errors[0].error.retry_status.type == "retrying"
    (failed, message), second = results(seen)
    assert failed and "could not be set up" in message and "refused the credentials" in message
    assert second == (False, "second")  # the session goes on without the repository
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"

    resource = egress_client.beta.sessions.retrieve(session.id).resources[0]
    egress_client.beta.sessions.resources.update(
        resource.id, session_id=session.id, authorization_token=git_server.token
    )
    retried = run(egress_client, fake, session.id, f"cat /workspace/{name.rsplit('/', 1)[1][:-4]}/a.txt")
    assert results(retried) == [(False, "locked")] and "session.error" not in [e.type for e in retried]


def test_missing_repositories_and_branches_are_their_own_errors(
    egress_client: anthropic.Anthropic, fake: FakeModel, git_server: GitServer
) -> None:
    name = f"team/there-{uuid.uuid4().hex[:6]}.git"
    bare = git_server.make_repo(name, {"a.txt": "x\n"})
    first = subprocess.run(
        ["git", "-C", str(bare), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as work:  # a second commit: the pinned checkout must not be the tip
        subprocess.run(["git", "clone", "-q", str(bare), work], check=True)
        git = ["git", "-C", work, "-c", "user.name=S", "-c", "user.email=s@example.com"]
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "later"], check=True)
        subprocess.run([*git, "push", "-q", "origin", "main"], check=True)
    token = git_server.token
    session = new_session(
        egress_client,
        [
            {"type": "github_repository", "url": f"{git_server.url()}/team/absent.git", "authorization_token": token},
            {
                "type": "github_repository",
                "url": f"{git_server.url()}/{name}",
                "authorization_token": token,
                "checkout": {"type": "branch", "name": "no-such-branch"},
            },
            {
                "type": "github_repository",
                "url": f"{git_server.url()}/{name}",
                "authorization_token": token,
                "checkout": {"type": "commit", "sha": first},
                "mount_path": "/workspace/pinned",
            },
        ],
    )
    seen = run(egress_client, fake, session.id, "true", "git -C /workspace/pinned rev-parse HEAD")
    kinds = [e.error.type for e in seen if e.type == "session.error"]
    assert kinds == ["repository_not_found_error", "repository_checkout_error"]
    assert results(seen)[1] == (False, first)  # the third one is checked out at the pinned commit
    assert token not in everything_said(egress_client, session.id)
