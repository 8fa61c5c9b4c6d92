"""Agents through the official SDK: versions, updates, archive, pagination, and exact wire shapes."""

from __future__ import annotations

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsAgent

from .wire import assert_exact


def test_create_returns_resolved_agent(client: anthropic.Anthropic) -> None:
    raw = client.beta.agents.with_raw_response.create(
        name="Coding Assistant",
        model="claude-sonnet-4-6",
        system="Write clean code.",
        tools=[
            {
                "type": "agent_toolset_20260401",
                "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
            },
            {
                "type": "custom",
                "name": "get_weather",
                "description": "Weather for a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        ],
        metadata={"team": "infra"},
    )
    agent = assert_exact(BetaManagedAgentsAgent, raw.http_response.json())
    assert agent.id.startswith("agent_") and agent.version == 1
    assert agent.model.id == "claude-sonnet-4-6" and agent.model.speed == "standard"
    assert agent.model.effort is not None and agent.model.effort.type == "high"
    toolset = agent.tools[0]
    assert toolset.default_config.enabled is True
    assert toolset.default_config.permission_policy.type == "always_allow"
    assert [(c.name, c.permission_policy.type, c.enabled) for c in toolset.configs] == [("bash", "always_ask", True)]
    assert agent.tools[1].name == "get_weather"
    assert agent.execution_identity.type == "service_account"
    assert agent.metadata == {"team": "infra"} and agent.archived_at is None
    assert raw.http_response.headers["request-id"].startswith("req_")


def test_update_makes_versions_and_old_versions_stay(client: anthropic.Anthropic) -> None:
    agent = client.beta.agents.create(
        name="v", model="claude-sonnet-4-6", system="first", metadata={"a": "1", "b": "2"}
    )
    v2 = client.beta.agents.update(agent.id, system="second", metadata={"a": None, "c": "3"}, version=1)
    assert v2.version == 2 and v2.system == "second" and v2.metadata == {"b": "2", "c": "3"}
    assert v2.name == "v"  # omitted fields are kept
    v3 = client.beta.agents.update(agent.id, model={"id": "claude-opus-4-6", "effort": "low"}, description="d")
    assert v3.version == 3 and v3.model.id == "claude-opus-4-6" and v3.model.effort.type == "low"
    assert client.beta.agents.retrieve(agent.id, version=1).system == "first"
    assert client.beta.agents.retrieve(agent.id).version == 3
    versions = list(client.beta.agents.versions.list(agent.id, limit=2))
    assert [v.version for v in versions] == [3, 2, 1]
    cleared = client.beta.agents.update(agent.id, system="", description=None)
    assert cleared.system is None and cleared.description is None and cleared.version == 4


def test_noop_update_makes_no_version(client: anthropic.Anthropic) -> None:
    agent = client.beta.agents.create(name="same", model="claude-sonnet-4-6", system="s")
    again = client.beta.agents.update(agent.id, system="s")
    assert again.version == 1


def test_stale_version_conflicts_and_changes_nothing(client: anthropic.Anthropic) -> None:
    agent = client.beta.agents.create(name="cas", model="claude-sonnet-4-6")
    client.beta.agents.update(agent.id, system="x", version=1)
    with pytest.raises(anthropic.ConflictError) as info:
        client.beta.agents.update(agent.id, system="y", version=1)
    assert info.value.response.headers.get("x-should-retry") == "false"
    assert client.beta.agents.retrieve(agent.id).system == "x"


def test_archive_hides_from_list_and_blocks_sessions(client: anthropic.Anthropic, environment) -> None:
    agent = client.beta.agents.create(name="old", model="claude-sonnet-4-6")
    archived = client.beta.agents.archive(agent.id)
    assert archived.archived_at is not None
    listed = [a.id for a in client.beta.agents.list(limit=100)]
    assert agent.id not in listed
    assert agent.id in [a.id for a in client.beta.agents.list(limit=100, include_archived=True)]
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with pytest.raises(anthropic.BadRequestError):
        client.beta.agents.update(agent.id, system="nope")


def test_list_pages_cover_everything_once(client: anthropic.Anthropic) -> None:
    made = {
        client.beta.agents.create(name=f"page-{i}", model="claude-sonnet-4-6", metadata={"batch": "p"}).id
        for i in range(7)
    }
    first = client.beta.agents.list(limit=3)
    assert len(first.data) == 3 and first.next_page
    seen = [a.id for a in client.beta.agents.list(limit=3)]  # auto-paginates through all pages
    assert made <= set(seen) and len(seen) == len(set(seen))
    created = [a.created_at for a in client.beta.agents.list(limit=100)]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"name": "", "model": "claude-sonnet-4-6"}, "name"),
        ({"name": "x"}, "model"),
        (
            {"name": "x", "model": "m", "tools": [{"type": "mcp_toolset", "mcp_server_name": "nope"}]},
            "unknown MCP server",
        ),
        (
            {"name": "x", "model": "m", "mcp_servers": [{"type": "url", "name": "gh", "url": "https://x/mcp"}]},
            "must be referenced",
        ),
        ({"name": "x", "model": "m", "metadata": {f"k{i}": "v" for i in range(17)}}, "16"),
        (
            {
                "name": "x",
                "model": "m",
                "tools": [
                    {"type": "custom", "name": "bad name!", "description": "d", "input_schema": {"type": "object"}}
                ],
            },
            "custom tool",
        ),
        ({"name": "x", "model": "m", "surprise": 1}, "unknown field"),
        (
            {
                "name": "x",
                "model": "m",
                "tools": [
                    {"type": "agent_toolset_20260401", "configs": [{"name": "bash", "allowed_domains": ["a.com"]}]}
                ],
            },
            "allowed_domains",
        ),
    ],
)
def test_invalid_agents_are_rejected(client: anthropic.Anthropic, body: dict, fragment: str) -> None:
    before = len(list(client.beta.agents.list(limit=100, include_archived=True)))
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post(
            "/v1/agents",
            body=body,
            cast_to=object,
            options={"headers": {"anthropic-beta": "managed-agents-2026-04-01"}},
        )
    error = (
        info.value.body["error"]
        if isinstance(info.value.body, dict) and "error" in info.value.body
        else info.value.body
    )
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]
    assert len(list(client.beta.agents.list(limit=100, include_archived=True))) == before


def test_unknown_agent_and_version(client: anthropic.Anthropic, agent) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.beta.agents.retrieve("agent_doesnotexist")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.agents.retrieve(agent.id, version=99)
