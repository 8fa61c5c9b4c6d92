"""Environments through the SDK: config defaults and merges, uniqueness, archive, delete."""

from __future__ import annotations

import uuid

import anthropic
import pytest
from anthropic.types.beta import BetaEnvironment

from .wire import assert_exact


def _name() -> str:
    return f"env-{uuid.uuid4().hex[:10]}"


def test_create_fills_config_defaults(client: anthropic.Anthropic) -> None:
    raw = client.beta.environments.with_raw_response.create(
        name=_name(), config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]}}
    )
    env = assert_exact(BetaEnvironment, raw.http_response.json())
    assert env.id.startswith("env_") and env.scope == "organization"
    assert env.config.networking.type == "limited"
    assert env.config.networking.allowed_hosts == ["api.example.com"]
    assert env.config.networking.allow_mcp_servers is False
    assert env.config.packages.pip == [] and env.config.packages.type == "packages"


def test_update_merges_config_and_patches_metadata(client: anthropic.Anthropic) -> None:
    env = client.beta.environments.create(
        name=_name(), config={"type": "cloud", "packages": {"pip": ["pandas==2.2.0"]}}, metadata={"a": "1", "b": "2"}
    )
    updated = client.beta.environments.update(
        env.id, config={"type": "cloud", "packages": {"apt": ["jq"]}}, metadata={"a": None, "b": "", "c": "3"}
    )
    assert updated.config.packages.pip == ["pandas==2.2.0"] and updated.config.packages.apt == ["jq"]
    assert updated.config.networking.type == "unrestricted"
    assert updated.metadata == {"c": "3"}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.environments.update(env.id, config={"type": "self_hosted"})
    assert info.value.body["error"]["details"]["error_code"] == "invalid_config_type_change"
    assert client.beta.environments.retrieve(env.id).config.type == "cloud"


def test_names_are_unique(client: anthropic.Anthropic) -> None:
    name = _name()
    client.beta.environments.create(name=name)
    with pytest.raises(anthropic.ConflictError):
        client.beta.environments.create(name=name)


def test_packages_under_limited_networking_need_permission(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.environments.create(
            name=_name(), config={"type": "cloud", "networking": {"type": "limited"}, "packages": {"pip": ["x"]}}
        )
    assert "allow_package_managers" in info.value.body["error"]["message"]


def test_archive_then_update_fails_and_delete_removes(client: anthropic.Anthropic, agent) -> None:
    env = client.beta.environments.create(name=_name())
    archived = client.beta.environments.archive(env.id)
    assert archived.archived_at is not None
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.environments.update(env.id, name=_name())
    assert info.value.body["error"]["details"]["error_code"] == "environment_archived"
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    assert env.id not in [e.id for e in client.beta.environments.list(limit=100)]
    assert env.id in [e.id for e in client.beta.environments.list(limit=100, include_archived=True)]
    deleted = client.beta.environments.delete(env.id)
    assert deleted.id == env.id and deleted.type == "environment_deleted"
    with pytest.raises(anthropic.NotFoundError) as info:
        client.beta.environments.retrieve(env.id)
    assert info.value.body["error"]["details"]["error_code"] == "environment_not_found"


def test_self_hosted_config(client: anthropic.Anthropic) -> None:
    raw = client.beta.environments.with_raw_response.create(name=_name(), config={"type": "self_hosted"})
    env = assert_exact(BetaEnvironment, raw.http_response.json())
    assert env.config.type == "self_hosted"
