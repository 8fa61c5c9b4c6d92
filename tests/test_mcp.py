"""MCP toolsets end to end: the SDK drives sessions whose model (the fake) calls tools of a real MCP server
(tests/mcp_server.py, the `mcp` SDK's server on 127.0.0.1) that requires a bearer token from the session's
vaults; OAuth tokens are refreshed through the server's token endpoint."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.beta.sessions import (
    BetaManagedAgentsAgentMCPToolResultEvent,
    BetaManagedAgentsAgentMCPToolUseEvent,
    BetaManagedAgentsSessionErrorEvent,
)
from anthropic.types.beta.vaults import BetaManagedAgentsCredentialValidation

from corral.tools.mcp import MCPClient, MCPFailure, NoTokens, model_tool_name

from .conftest import API_KEY
from .fake_model import FakeModel, Reply, tool_results
from .mcp_server import CLIENT_ID, CLIENT_SECRET, MCPTestServer
from .servers import ServerThread
from .turns import text, turn, types
from .wire import assert_exact

ALLOW = {"type": "always_allow"}
HEADERS = {"x-api-key": API_KEY, "anthropic-beta": "managed-agents-2026-04-01"}


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[MCPTestServer]:
    with MCPTestServer() as server:
        yield server


def echo_results(body: dict) -> Reply:
    return Reply(text=" | ".join(result for _, result in tool_results(body)))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"


def setup(
    client: anthropic.Anthropic,
    url: str,
    *,
    toolset: dict[str, Any] | None = None,
    credential: dict[str, Any] | None = None,
    name: str = "tools",
) -> Any:
    """A session of an agent with one MCP server `name` at `url`, and a vault holding `credential`."""
    agent = client.beta.agents.create(
        name="mcp user",
        model="claude-sonnet-4-6",
        mcp_servers=[{"type": "url", "name": name, "url": url}],
        tools=[{"type": "mcp_toolset", "mcp_server_name": name, **(toolset or {})}],
    )
    env = client.beta.environments.create(name=f"env-{uuid.uuid4().hex[:10]}")
    vault_ids = []
    if credential is not None:
        vault = client.beta.vaults.create(display_name="mcp creds")
        client.beta.vaults.credentials.create(vault.id, auth={"mcp_server_url": url, **credential})
        vault_ids.append(vault.id)
    return client.beta.sessions.create(agent=agent.id, environment_id=env.id, vault_ids=vault_ids)


def raw_events(server: ServerThread, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/v1/sessions/{session_id}/events",
        params={"limit": 1000},
        headers=HEADERS,
    )
    response.raise_for_status()
    return response.json()["data"]


WIRE = {
    "agent.mcp_tool_use": BetaManagedAgentsAgentMCPToolUseEvent,
    "agent.mcp_tool_result": BetaManagedAgentsAgentMCPToolResultEvent,
    "session.error": BetaManagedAgentsSessionErrorEvent,
}


def assert_wire_exact(server: ServerThread, session_id: str) -> set[str]:
    """Every MCP event and session error of the session is exactly the SDK's shape; returns the types seen."""
    checked = set()
    for event in raw_events(server, session_id):
        if event["type"] in WIRE:
            assert_exact(WIRE[event["type"]], event)
            checked.add(event["type"])
    return checked


def everything_said(client: anthropic.Anthropic, session_id: str) -> str:
    """Every event of the session as the API lists it, as one JSON text."""
    events = client.beta.sessions.events.list(session_id, limit=1000)
    return json.dumps([e.model_dump(mode="json") for e in events])


def test_an_mcp_tool_runs_with_the_vaults_bearer_token(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer, agent_server: ServerThread
) -> None:
    token = mcp_server.new_token()
    name = f"s{uuid.uuid4().hex[:6]}"
    url = mcp_server.url(name)
    toolset = {"default_config": {"permission_policy": ALLOW}, "configs": [{"name": "wipe", "enabled": False}]}
    session = setup(agents, url, toolset=toolset, credential={"type": "static_bearer", "token": token})
    fake.reply(tool_use=[("mcp__tools__add", {"a": 2, "b": 3})])
    fake.respond_with(echo_results)
    seen = turn(agents, session.id, [text("add them")])

    agent_events = [t for t in types(seen) if t.startswith("agent.")]
    assert agent_events == ["agent.mcp_tool_use", "agent.mcp_tool_result", "agent.message"]
    use = next(e for e in seen if e.type == "agent.mcp_tool_use")
    result = next(e for e in seen if e.type == "agent.mcp_tool_result")
    assert (use.name, use.mcp_server_name, use.input) == ("add", "tools", {"a": 2, "b": 3})
    assert use.evaluated_permission == "allow" and use.evaluation.type == "always_allow"
    assert result.mcp_tool_use_id == use.id and result.is_error is False
    assert [b.text for b in result.content] == ["5"]
    assert seen[-1].stop_reason.type == "end_turn"
    # the model saw the server's enabled tools under prefixed names, and the result as a tool_result
    first, second = fake.model_requests[-2:]
    offered = {t["name"]: t for t in first.json["tools"]}
    assert {"mcp__tools__add", "mcp__tools__shout", "mcp__tools__nap"} <= set(offered)
    assert "mcp__tools__wipe" not in offered
    assert offered["mcp__tools__add"]["input_schema"]["required"] == ["a", "b"]
    assert offered["mcp__tools__add"]["description"] == "Add two integers."
    assert [r for _, r in tool_results(second.json)] == ["5"]
    # the server saw the token; nothing else did
    assert mcp_server.seen_at(name) and set(mcp_server.seen_at(name)) == {f"Bearer {token}"}
    assert ("add", {"a": 2, "b": 3}) in mcp_server.calls
    assert assert_wire_exact(agent_server, session.id) == {"agent.mcp_tool_use", "agent.mcp_tool_result"}
    assert token not in everything_said(agents, session.id)
    assert token not in json.dumps([r.json for r in fake.model_requests])
    assert token not in agents.beta.sessions.retrieve(session.id).model_dump_json()
    for vault_id in session.vault_ids:
        listed = agents.beta.vaults.credentials.list(vault_id)
        assert token not in json.dumps([c.model_dump(mode="json") for c in listed])


def test_mcp_tools_ask_by_default_and_run_only_when_allowed(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer
) -> None:
    token = mcp_server.new_token()
    session = setup(agents, mcp_server.url("ask"), credential={"type": "static_bearer", "token": token})
    allowed, denied = f"allowed {uuid.uuid4().hex}", f"denied {uuid.uuid4().hex}"
    fake.reply(tool_use=[("mcp__tools__shout", {"text": allowed})])
    fake.reply(tool_use=[("mcp__tools__shout", {"text": denied})])
    fake.respond_with(echo_results)
    first = turn(agents, session.id, [text("shout")])
    use = next(e for e in first if e.type == "agent.mcp_tool_use")
    assert use.evaluated_permission == "ask" and use.evaluation.type == "always_ask"
    assert first[-1].stop_reason.type == "requires_action" and first[-1].stop_reason.event_ids == [use.id]
    assert ("shout", {"text": allowed}) not in mcp_server.calls

    allow = {"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}
    second = turn(agents, session.id, [allow])
    result = next(e for e in second if e.type == "agent.mcp_tool_result")
    assert result.mcp_tool_use_id == use.id and [b.text for b in result.content] == [allowed.upper()]
    assert ("shout", {"text": allowed}) in mcp_server.calls
    again = next(e for e in second if e.type == "agent.mcp_tool_use")
    assert second[-1].stop_reason.type == "requires_action"

    deny = {"type": "user.tool_confirmation", "tool_use_id": again.id, "result": "deny", "deny_message": "not now"}
    third = turn(agents, session.id, [deny])
    assert third[-1].stop_reason.type == "end_turn"
    assert ("shout", {"text": denied}) not in mcp_server.calls
    assert tool_results(fake.model_requests[-1].json)[0][1] == "Denied by the user: not now"


def test_an_expiring_oauth_token_is_refreshed_and_stored(
    agents: anthropic.Anthropic,
    fake: FakeModel,
    mcp_server: MCPTestServer,
    agent_server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stale = mcp_server.new_token()
    mcp_server.tokens.discard(stale)  # the server no longer takes it
    refresh_token = "rt-" + uuid.uuid4().hex
    mcp_server.refresh_tokens.add(refresh_token)
    name = f"o{uuid.uuid4().hex[:6]}"
    url = mcp_server.url(name)
    credential = {
        "type": "mcp_oauth",
        "access_token": stale,
        "refresh": {
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
            "token_endpoint": f"{mcp_server.base}/token",
            "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": CLIENT_SECRET},
            "scope": "tools",
        },
    }
    session = setup(agents, url, toolset={"default_config": {"permission_policy": ALLOW}}, credential=credential)
    fake.reply(tool_use=[("mcp__tools__add", {"a": 20, "b": 22})])
    fake.respond_with(echo_results)
    seen = turn(agents, session.id, [text("add")])
    result = next(e for e in seen if e.type == "agent.mcp_tool_result")
    assert [b.text for b in result.content] == ["42"] and not result.is_error
    assert "session.error" not in types(seen)
    # refused once (401), refreshed once, then every request carried the new token
    fresh = mcp_server.issued[-1]
    assert mcp_server.seen_at(name)[0] == f"Bearer {stale}"
    assert set(mcp_server.seen_at(name)[1:]) == {f"Bearer {fresh}"}
    request = mcp_server.token_requests[-1]
    assert request.form["grant_type"] == "refresh_token" and request.form["scope"] == "tools"
    # the refreshed token (and the rotated refresh token) were stored: a new session uses it directly
    (vault_id,) = session.vault_ids
    (stored,) = agents.beta.vaults.credentials.list(vault_id)
    assert stored.auth.expires_at is not None and stored.auth.expires_at > datetime.now(UTC) + timedelta(minutes=50)
    requests_before = len(mcp_server.token_requests)
    again = agents.beta.sessions.create(
        agent=session.agent.id, environment_id=session.environment_id, vault_ids=[vault_id]
    )
    fake.reply(tool_use=[("mcp__tools__add", {"a": 1, "b": 1})])
    seen = turn(agents, again.id, [text("add again")])
    assert [b.text for b in next(e for e in seen if e.type == "agent.mcp_tool_result").content] == ["2"]
    assert len(mcp_server.token_requests) == requests_before
    said = everything_said(agents, session.id) + everything_said(agents, again.id)
    assert stale not in said and fresh not in said and refresh_token not in said
    # what this process logged at any level, but for the test's own SDK client (which logs its requests)
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("anthropic"))
    assert "refreshed the access token of credential" in logged  # the worker's log is captured here
    assert stale not in logged and fresh not in logged and refresh_token not in logged
    assert CLIENT_SECRET not in logged and "Bearer" not in logged


def test_an_expired_oauth_token_is_refreshed_before_use(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer
) -> None:
    stale = mcp_server.new_token()
    mcp_server.tokens.discard(stale)
    refresh_token = "rt-" + uuid.uuid4().hex
    mcp_server.refresh_tokens.add(refresh_token)
    name = f"e{uuid.uuid4().hex[:6]}"
    credential = {
        "type": "mcp_oauth",
        "access_token": stale,
        "expires_at": (datetime.now(UTC) + timedelta(seconds=20)).isoformat(),  # within the refresh margin
        "refresh": {
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
            "token_endpoint": f"{mcp_server.base}/token",
            "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": CLIENT_SECRET},
        },
    }
    session = setup(agents, mcp_server.url(name), toolset={"default_config": {"permission_policy": ALLOW}},
                    credential=credential)  # fmt: skip
    fake.reply(tool_use=[("mcp__tools__shout", {"text": "fresh"})])
    fake.respond_with(echo_results)
    seen = turn(agents, session.id, [text("shout")])
    assert [b.text for b in next(e for e in seen if e.type == "agent.mcp_tool_result").content] == ["FRESH"]
    assert f"Bearer {stale}" not in mcp_server.seen_at(name)  # never sent: refreshed first


def test_a_refused_token_is_an_authentication_error_and_the_session_goes_on(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer, agent_server: ServerThread
) -> None:
    session = setup(agents, mcp_server.url("wrong"), credential={"type": "static_bearer", "token": "not-a-token"})
    fake.respond_with(echo_results)
    fake.reply(text="I will do without the tools.")
    seen = turn(agents, session.id, [text("try")])
    errors = [e for e in seen if e.type == "session.error"]
    assert [e.error.type for e in errors] == ["mcp_authentication_failed_error"]
    assert errors[0].error.mcp_server_name == "tools" and errors[0].error.retry_status.type == "retrying"
    assert "not-a-token" not in errors[0].error.message
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"
    offered = [t["name"] for t in fake.model_requests[-1].json.get("tools", [])]
    assert not any(n.startswith("mcp__") for n in offered)
    assert "not-a-token" not in everything_said(agents, session.id)
    assert assert_wire_exact(agent_server, session.id) == {"session.error"}


def test_a_token_revoked_before_the_call_gives_an_error_result(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer
) -> None:
    token = mcp_server.new_token()
    session = setup(agents, mcp_server.url("revoked"), credential={"type": "static_bearer", "token": token})
    fake.reply(tool_use=[("mcp__tools__add", {"a": 1, "b": 2})])
    fake.respond_with(echo_results)
    first = turn(agents, session.id, [text("add")])
    use = next(e for e in first if e.type == "agent.mcp_tool_use")
    mcp_server.tokens.discard(token)
    second = turn(agents, session.id, [{"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}])
    error = next(e for e in second if e.type == "session.error")
    result = next(e for e in second if e.type == "agent.mcp_tool_result")
    assert error.error.type == "mcp_authentication_failed_error" and error.error.mcp_server_name == "tools"
    assert result.is_error and "refused the credentials" in result.content[0].text
    assert second[-1].stop_reason.type == "end_turn"
    assert "refused the credentials" in tool_results(fake.model_requests[-1].json)[0][1]


def test_an_unreachable_server_is_a_connection_error_and_the_session_goes_on(
    agents: anthropic.Anthropic, fake: FakeModel
) -> None:
    session = setup(agents, closed_port_url())
    fake.reply(text="No tools today.")
    seen = turn(agents, session.id, [text("try")])
    errors = [e for e in seen if e.type == "session.error"]
    assert [e.error.type for e in errors] == ["mcp_connection_failed_error"]
    assert errors[0].error.mcp_server_name == "tools"
    assert seen[-1].stop_reason.type == "end_turn"
    assert [e.content[0].text for e in seen if e.type == "agent.message"] == ["No tools today."]
    # the next turn tries the server again
    fake.reply(text="Still none.")
    seen = turn(agents, session.id, [text("again")])
    assert [e.error.type for e in seen if e.type == "session.error"] == ["mcp_connection_failed_error"]


def test_an_interrupt_stops_a_running_mcp_call(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer
) -> None:
    token = mcp_server.new_token()
    toolset = {"default_config": {"permission_policy": ALLOW}}
    session = setup(
        agents, mcp_server.url("nap"), toolset=toolset, credential={"type": "static_bearer", "token": token}
    )
    fake.reply(tool_use=[("mcp__tools__nap", {"seconds": 20})])
    seen = []
    with agents.beta.sessions.events.stream(session.id, timeout=15) as stream:
        agents.beta.sessions.events.send(session.id, events=[text("rest")])
        for event in stream:
            seen.append(event)
            if event.type == "agent.mcp_tool_use":
                agents.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
            if event.type == "session.status_idle":
                break
    result = next(e for e in seen if e.type == "agent.mcp_tool_result")
    assert result.is_error and result.content[0].text == "Interrupted by the user."
    assert seen[-1].stop_reason.type == "end_turn" and "session.error" not in types(seen)


async def test_a_tool_call_past_its_timeout_is_a_connection_failure(mcp_server: MCPTestServer) -> None:
    class Fixed:
        async def token(self, server_url: str, *, refresh: bool = False) -> str | None:
            return token

    token = mcp_server.new_token()
    client = MCPClient(timeout=5, tool_timeout=0.5)
    with pytest.raises(MCPFailure) as failure:
        await client.call_tool(mcp_server.url("slow"), Fixed(), "nap", {"seconds": 5})
    assert failure.value.kind == "connection" and "did not answer within 0.5 seconds" in failure.value.message
    result = await client.call_tool(mcp_server.url("slow"), Fixed(), "nap", {"seconds": 0.01})
    assert result.content == [{"type": "text", "text": "rested"}] and not result.is_error
    unknown = await client.call_tool(mcp_server.url("slow"), Fixed(), "no_such_tool", {})
    assert unknown.is_error and "no_such_tool" in unknown.content[0]["text"]
    with pytest.raises(MCPFailure) as failure:
        await client.list_tools(mcp_server.url("slow"), NoTokens())
    assert failure.value.kind == "authentication" and "vaults hold none" in failure.value.message


def test_model_tool_names_are_safe_and_unique() -> None:
    taken: set[str] = set()
    first = model_tool_name("git hub", "search.issues", taken)
    assert first == "mcp__git_hub__search_issues"
    taken.add(first)
    clash = model_tool_name("git.hub", "search issues", taken)
    assert clash != first and clash.startswith("mcp__git_hub__search_issues_") and clash not in taken
    long = model_tool_name("s" * 100, "t" * 100, set())
    assert len(long) == 128 and long.startswith("mcp__sss")


def oauth_credential(mcp_server: MCPTestServer, url: str, access_token: str, **refresh: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {"type": "mcp_oauth", "mcp_server_url": url, "access_token": access_token}
    if refresh:
        auth["refresh"] = {
            "client_id": CLIENT_ID,
            "token_endpoint": f"{mcp_server.base}/token",
            "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": CLIENT_SECRET},
            **refresh,
        }
    return auth


def validate(server: ServerThread, vault_id: str, credential_id: str) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/v1/vaults/{vault_id}/credentials/{credential_id}/mcp_oauth_validate",
        headers={
            "x-api-key": API_KEY,
            "anthropic-beta": "managed-agents-2026-04-01",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 200, response.text
    assert_exact(BetaManagedAgentsCredentialValidation, response.json())
    return response.json()


def test_validating_an_oauth_credential_probes_the_server_and_refreshes(
    agents: anthropic.Anthropic, mcp_server: MCPTestServer, agent_server: ServerThread
) -> None:
    vault = agents.beta.vaults.create(display_name="validate")
    creds = agents.beta.vaults.credentials

    good = creds.create(vault.id, auth=oauth_credential(mcp_server, mcp_server.url("v1"), mcp_server.new_token()))
    report = validate(agent_server, vault.id, good.id)
    assert (report["status"], report["mcp_probe"], report["refresh"]) == ("valid", None, None)
    assert report["has_refresh_token"] is False and report["credential_id"] == good.id
    sdk = creds.mcp_oauth_validate(good.id, vault_id=vault.id)  # the SDK's own method reaches the same route
    assert sdk.status == "valid" and sdk.type == "vault_credential_validation"

    refused = creds.create(vault.id, auth=oauth_credential(mcp_server, mcp_server.url("v2"), "stale-token"))
    report = validate(agent_server, vault.id, refused.id)
    assert report["status"] == "invalid" and report["refresh"] == {"status": "no_refresh_token", "http_response": None}
    assert report["mcp_probe"]["method"] == "initialize"
    assert report["mcp_probe"]["http_response"]["status_code"] == 401
    assert "invalid_token" in report["mcp_probe"]["http_response"]["body"]

    refresh_token = "rt-" + uuid.uuid4().hex
    mcp_server.refresh_tokens.add(refresh_token)
    auth = oauth_credential(mcp_server, mcp_server.url("v3"), "stale-token", refresh_token=refresh_token)
    renewable = creds.create(vault.id, auth=auth)
    report = validate(agent_server, vault.id, renewable.id)
    assert report["status"] == "valid" and report["has_refresh_token"] is True
    assert report["refresh"] == {"status": "succeeded", "http_response": None} and report["mcp_probe"] is None
    assert mcp_server.issued[-1] not in json.dumps(report)
    assert creds.retrieve(renewable.id, vault_id=vault.id).auth.expires_at is not None  # the new token was stored
    assert validate(agent_server, vault.id, renewable.id)["refresh"] is None  # and is used from now on

    auth = oauth_credential(mcp_server, mcp_server.url("v4"), "stale-token", refresh_token="rt-unknown")
    auth["refresh"]["token_endpoint_auth"]["client_secret"] = "wrong"
    broken = creds.create(vault.id, auth=auth)
    report = validate(agent_server, vault.id, broken.id)
    assert report["status"] == "invalid" and report["refresh"]["status"] == "failed"
    assert report["refresh"]["http_response"]["status_code"] == 401
    assert "invalid_client" in report["refresh"]["http_response"]["body"]

    down = creds.create(vault.id, auth=oauth_credential(mcp_server, closed_port_url(), "whatever"))
    report = validate(agent_server, vault.id, down.id)
    assert report["status"] == "unknown" and report["mcp_probe"] == {"method": "initialize", "http_response": None}

    bearer = creds.create(
        vault.id, auth={"type": "static_bearer", "mcp_server_url": mcp_server.url("v5"), "token": "t"}
    )
    with pytest.raises(anthropic.BadRequestError) as error:
        creds.mcp_oauth_validate(bearer.id, vault_id=vault.id)
    assert "only mcp_oauth can be validated" in error.value.message
    with pytest.raises(anthropic.NotFoundError):
        creds.mcp_oauth_validate("vcrd_missing", vault_id=vault.id)


def test_per_tool_configs_override_the_toolset_default(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer
) -> None:
    token = mcp_server.new_token()
    toolset = {
        "default_config": {"enabled": False, "permission_policy": {"type": "always_ask"}},
        "configs": [{"name": "add", "enabled": True, "permission_policy": ALLOW}, {"name": "shout", "enabled": True}],
    }
    credential = {"type": "static_bearer", "token": token}
    session = setup(agents, mcp_server.url("configs"), toolset=toolset, credential=credential, name="cfg.srv")
    fake.reply(tool_use=[("mcp__cfg_srv__add", {"a": 4, "b": 4}), ("mcp__cfg_srv__shout", {"text": "hey"})])
    fake.respond_with(echo_results)
    seen = turn(agents, session.id, [text("both")])
    offered = sorted(t["name"] for t in fake.model_requests[-1].json["tools"])
    assert offered == ["mcp__cfg_srv__add", "mcp__cfg_srv__shout"]
    add, shout = [e for e in seen if e.type == "agent.mcp_tool_use"]
    assert (add.mcp_server_name, add.evaluated_permission, shout.evaluated_permission) == ("cfg.srv", "allow", "ask")
    (result,) = [e for e in seen if e.type == "agent.mcp_tool_result"]
    assert result.mcp_tool_use_id == add.id and result.content[0].text == "8"
    assert seen[-1].stop_reason.type == "requires_action" and seen[-1].stop_reason.event_ids == [shout.id]


def test_tools_of_several_servers_keep_apart_and_one_failing_server_spares_the_others(
    agents: anthropic.Anthropic, fake: FakeModel, mcp_server: MCPTestServer
) -> None:
    first, second = mcp_server.new_token(), mcp_server.new_token()
    paths = {"alpha": f"a{uuid.uuid4().hex[:8]}", "beta": f"b{uuid.uuid4().hex[:8]}"}
    urls = {"alpha": mcp_server.url(paths["alpha"]), "beta": mcp_server.url(paths["beta"]), "gone": closed_port_url()}
    agent = agents.beta.agents.create(
        name="several",
        model="claude-sonnet-4-6",
        mcp_servers=[{"type": "url", "name": n, "url": u} for n, u in urls.items()],
        tools=[
            {"type": "mcp_toolset", "mcp_server_name": n, "default_config": {"permission_policy": ALLOW}} for n in urls
        ],
    )
    vault = agents.beta.vaults.create(display_name="two servers")
    for url, token in ((urls["alpha"], first), (urls["beta"] + "/", second)):  # a trailing / still matches
        agents.beta.vaults.credentials.create(
            vault.id, auth={"type": "static_bearer", "mcp_server_url": url, "token": token}
        )
    env = agents.beta.environments.create(name=f"env-{uuid.uuid4().hex[:10]}")
    session = agents.beta.sessions.create(agent=agent.id, environment_id=env.id, vault_ids=[vault.id])
    fake.reply(tool_use=[("mcp__alpha__add", {"a": 1, "b": 1}), ("mcp__beta__add", {"a": 2, "b": 2})])
    fake.respond_with(echo_results)
    seen = turn(agents, session.id, [text("add on both")])
    errors = [(e.error.type, e.error.mcp_server_name) for e in seen if e.type == "session.error"]
    assert errors == [("mcp_connection_failed_error", "gone")]
    offered = {t["name"] for t in fake.model_requests[-2].json["tools"]}
    assert {"mcp__alpha__add", "mcp__beta__add"} <= offered and not any("gone" in n for n in offered)
    uses = [(e.mcp_server_name, e.name) for e in seen if e.type == "agent.mcp_tool_use"]
    assert uses == [("alpha", "add"), ("beta", "add")]
    assert [e.content[0].text for e in seen if e.type == "agent.mcp_tool_result"] == ["2", "4"]
    assert set(mcp_server.seen_at(paths["alpha"])) == {f"Bearer {first}"}
    assert set(mcp_server.seen_at(paths["beta"])) == {f"Bearer {second}"}
    assert seen[-1].stop_reason.type == "end_turn"
