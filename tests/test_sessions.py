"""Sessions through the SDK: agent pinning and overrides, initial events, filters, pages, update, archive, delete."""

from __future__ import annotations

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsSession

from .wire import assert_exact


def test_create_pins_latest_version_and_starts_idle(client: anthropic.Anthropic, agent, environment) -> None:
    raw = client.beta.sessions.with_raw_response.create(
        agent=agent.id, environment_id=environment.id, title="first", metadata={"k": "v"}
    )
    session = assert_exact(BetaManagedAgentsSession, raw.http_response.json())
    assert session.id.startswith("sesn_") and session.status == "idle"
    assert session.agent.id == agent.id and session.agent.version == 1 and session.agent.system == agent.system
    assert session.usage.input_tokens == 0 and session.vault_ids == [] and session.resources == []
    client.beta.agents.update(agent.id, system="changed")
    assert client.beta.sessions.retrieve(session.id).agent.system == agent.system  # the snapshot does not move


def test_create_with_explicit_version_and_overrides(client: anthropic.Anthropic, agent, environment) -> None:
    client.beta.agents.update(agent.id, system="v2 prompt")
    pinned = client.beta.sessions.create(
        agent={"type": "agent", "id": agent.id, "version": 1}, environment_id=environment.id
    )
    assert pinned.agent.version == 1 and pinned.agent.system == agent.system
    custom = client.beta.sessions.create(
        agent={
            "type": "agent_with_overrides",
            "id": agent.id,
            "system": "override",
            "tools": [{"type": "agent_toolset_20260401"}],
        },
        environment_id=environment.id,
    )
    assert custom.agent.system == "override" and custom.agent.version == 2
    assert custom.agent.tools[0].type == "agent_toolset_20260401"
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.create(
            agent={"type": "agent_with_overrides", "id": agent.id, "model": None}, environment_id=environment.id
        )
    assert info.value.body["error"]["details"]["error_code"] == "agent_model_required"


def test_initial_events_are_queued(client: anthropic.Anthropic, agent, environment) -> None:
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        initial_events=[{"type": "user.message", "content": [{"type": "text", "text": "start"}]}],
    )
    events = list(client.beta.sessions.events.list(session.id))
    assert [e.type for e in events] == ["user.message"]
    assert events[0].processed_at is None and events[0].content[0].text == "start"


def test_unknown_references_change_nothing(client: anthropic.Anthropic, agent, environment) -> None:
    before = len(list(client.beta.sessions.list(limit=100, include_archived=True)))
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.create(agent="agent_missing", environment_id=environment.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.create(agent=agent.id, environment_id="env_missing")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=["vlt_missing"])
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id, metadata={"k" * 65: "v"})
    assert len(list(client.beta.sessions.list(limit=100, include_archived=True))) == before


def test_list_filters_order_and_pages_both_ways(client: anthropic.Anthropic, environment) -> None:
    agent = client.beta.agents.create(name="lister", model="claude-sonnet-4-6")
    ids = [client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id for _ in range(5)]
    client.beta.agents.update(agent.id, system="v2")
    newer = client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id
    everything = [s.id for s in client.beta.sessions.list(agent_id=agent.id, limit=2)]
    assert everything == [newer, *reversed(ids)]
    ascending = [s.id for s in client.beta.sessions.list(agent_id=agent.id, order="asc", limit=4)]
    assert ascending == [*ids, newer]
    assert [s.id for s in client.beta.sessions.list(agent_id=agent.id, agent_version=2)] == [newer]
    first = client.beta.sessions.list(agent_id=agent.id, limit=2)
    assert first.prev_page is None and first.next_page
    second = client.beta.sessions.list(agent_id=agent.id, limit=2, page=first.next_page)
    assert [s.id for s in second.data] == [ids[3], ids[2]] and second.prev_page
    back = client.beta.sessions.list(agent_id=agent.id, limit=2, page=second.prev_page)
    assert [s.id for s in back.data] == [s.id for s in first.data]
    assert [s.id for s in client.beta.sessions.list(agent_id=agent.id, statuses=["running"])] == []
    created = client.beta.sessions.retrieve(ids[2]).created_at
    window = [s.id for s in client.beta.sessions.list(agent_id=agent.id, created_at_gte=created, order="asc")]
    assert window == [ids[2], ids[3], ids[4], newer]
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.list(agent_id=agent.id, order="asc", page=first.next_page)  # cursor made for desc


def test_update_emits_session_updated(client: anthropic.Anthropic, session) -> None:
    updated = client.beta.sessions.update(session.id, title="renamed", metadata={"x": "1"})
    assert updated.title == "renamed" and updated.metadata == {"x": "1"}
    events = list(client.beta.sessions.events.list(session.id, types=["session.updated"]))
    assert len(events) == 1 and events[0].title == "renamed" and events[0].metadata == {"x": "1"}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.update(
            session.id, budget={"type": "limit", "max_list_cost": {"amount": "100", "currency": "USD"}}
        )
    assert info.value.body["error"]["details"]["error_code"] == "budget_create_only"


def test_archive_terminates_and_blocks_events_then_delete(client: anthropic.Anthropic, session) -> None:
    archived = client.beta.sessions.archive(session.id)
    assert archived.archived_at is not None and archived.status == "terminated"
    assert [e.type for e in client.beta.sessions.events.list(session.id)] == ["session.status_terminated"]
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "x"}]}]
        )
    assert session.id not in [s.id for s in client.beta.sessions.list(limit=100)]
    deleted = client.beta.sessions.delete(session.id)
    assert deleted.type == "session_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.retrieve(session.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.events.list(session.id)


def test_delete_on_an_api_only_server_removes_the_sessions_files(
    client: anthropic.Anthropic, agent, environment, server
) -> None:
    """Workers on this machine share the data dir: the API process removes the deleted session's files."""
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    files = server.settings.data_dir.resolve() / "sandboxes" / "sessions" / session.id
    (files / "workspace").mkdir(parents=True)
    (files / "workspace" / "left.txt").write_text("from a worker")
    client.beta.sessions.delete(session.id)
    assert not files.exists()
