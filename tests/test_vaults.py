"""Vaults and credentials through the SDK, on SQLite and PostgreSQL: every endpoint and its wire shape,
validation that changes nothing, secrets that never come back and are encrypted at rest, the key file,
key rotation (`corral secrets rotate`), and sessions that attach vaults."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsDeletedVault, BetaManagedAgentsSession, BetaManagedAgentsVault
from anthropic.types.beta.vaults import BetaManagedAgentsCredential, BetaManagedAgentsDeletedCredential
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from typer.testing import CliRunner

from corral.cli import app as cli_app
from corral.config import Settings, normalize_database_url
from corral.runtime import Runtime
from corral.schemas.vaults import CredentialCreate, VaultCreate
from corral.service.credentials import create_credential
from corral.service.vaults import create_vault
from corral.store import tables
from corral.store.db import Database
from corral.store.store import Store
from corral.vault.crypto import SecretBox

from .conftest import API_KEY
from .servers import ServerThread, database_url, serving
from .wire import assert_exact

# Every secret a test sends; no response body may ever contain one.
SECRETS: set[str] = set()


def secret(label: str) -> str:
    value = f"sk-{label}-{uuid.uuid4().hex}"
    SECRETS.add(value)
    return value


def body(response: Any) -> Any:
    """The raw JSON of an SDK `with_raw_response` call, after checking it holds no secret."""
    text = response.http_response.text
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secret returned in {response.http_response.url}"
    return response.http_response.json()


def error_of(call: Callable[[], Any], kind: type[anthropic.APIStatusError]) -> dict[str, Any]:
    """Run a call expected to fail; its error body must not contain a secret either."""
    with pytest.raises(kind) as info:
        call()
    text = info.value.response.text
    assert not [s for s in SECRETS if s in text], "secret echoed in an error"
    error: dict[str, Any] = info.value.body["error"]  # type: ignore[index]
    return error


def code_of(error: dict[str, Any]) -> str | None:
    return (error.get("details") or {}).get("error_code")


def _url() -> str:
    return f"https://mcp-{uuid.uuid4().hex[:8]}.example.com/mcp"


def bearer() -> dict[str, Any]:
    return {"type": "static_bearer", "mcp_server_url": _url(), "token": secret("bearer")}


def oauth(**refresh: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "mcp_oauth",
        "mcp_server_url": _url(),
        "access_token": secret("access"),
        "expires_at": "2099-01-02T03:04:05.678Z",
    }
    auth["refresh"] = {
        "refresh_token": secret("refresh"),
        "client_id": "client-1",
        "token_endpoint": "https://auth.example.com/oauth/token",
        "token_endpoint_auth": {"type": "client_secret_post", "client_secret": secret("client")},
        **refresh,
    }
    return auth


def env_var(**extra: Any) -> dict[str, Any]:
    return {
        "type": "environment_variable",
        "secret_name": f"KEY_{uuid.uuid4().hex[:8].upper()}",
        "secret_value": secret("env"),
        "networking": {"type": "limited", "allowed_hosts": ["api.example.com", "*.example.org", "192.0.2.1"]},
        **extra,
    }


@pytest.fixture
def vault(client: anthropic.Anthropic) -> BetaManagedAgentsVault:
    return client.beta.vaults.create(display_name="a test vault")


def all_credentials(client: anthropic.Anthropic, vault_id: str) -> list[dict[str, Any]]:
    return [c.model_dump() for c in client.beta.vaults.credentials.list(vault_id, include_archived=True, limit=100)]


# ---- vaults -----------------------------------------------------------------------------------------


def test_vault_lifecycle_and_wire_shapes(client: anthropic.Anthropic) -> None:
    vaults = client.beta.vaults.with_raw_response
    created = assert_exact(
        BetaManagedAgentsVault, body(vaults.create(display_name="Alice", metadata={"user": "u1", "tier": "pro"}))
    )
    assert created.id.startswith("vlt_") and created.type == "vault" and created.archived_at is None
    assert created.metadata == {"user": "u1", "tier": "pro"} and created.created_at == created.updated_at
    assert assert_exact(BetaManagedAgentsVault, body(vaults.retrieve(created.id))) == created

    updated = assert_exact(
        BetaManagedAgentsVault,
        body(vaults.update(created.id, display_name="Alice B.", metadata={"tier": None, "team": "x"})),
    )
    assert updated.display_name == "Alice B." and updated.metadata == {"user": "u1", "team": "x"}
    assert updated.updated_at >= created.updated_at
    assert client.beta.vaults.update(created.id) == updated  # nothing given: unchanged

    archived = assert_exact(BetaManagedAgentsVault, body(vaults.archive(created.id)))
    assert archived.archived_at is not None
    assert client.beta.vaults.archive(created.id) == archived  # idempotent
    error = error_of(lambda: client.beta.vaults.update(created.id, display_name="no"), anthropic.BadRequestError)
    assert code_of(error) == "vault_archived"
    assert created.id not in [v.id for v in client.beta.vaults.list(limit=100)]
    assert created.id in [v.id for v in client.beta.vaults.list(limit=100, include_archived=True)]

    deleted = assert_exact(BetaManagedAgentsDeletedVault, body(vaults.delete(created.id)))
    assert deleted.id == created.id and deleted.type == "vault_deleted"
    error_of(lambda: client.beta.vaults.retrieve(created.id), anthropic.NotFoundError)
    error_of(lambda: client.beta.vaults.delete(created.id), anthropic.NotFoundError)


def test_vault_validation_changes_nothing(client: anthropic.Anthropic, vault) -> None:
    before = [v.id for v in client.beta.vaults.list(limit=100, include_archived=True)]
    for bad in ({"display_name": ""}, {"display_name": "x" * 256}, {"display_name": "x", "metadata": {"k" * 65: "v"}}):
        error_of(lambda bad=bad: client.beta.vaults.create(**bad), anthropic.BadRequestError)
    beta = {"headers": {"anthropic-beta": "managed-agents-2026-04-01"}}
    error = error_of(
        lambda: client.post("/v1/vaults", cast_to=object, body={"display_name": "x", "bogus": 1}, options=beta),
        anthropic.BadRequestError,
    )
    assert "unknown field" in error["message"]
    assert [v.id for v in client.beta.vaults.list(limit=100, include_archived=True)] == before
    error = error_of(
        lambda: client.beta.vaults.update(vault.id, metadata={f"k{i}": "v" for i in range(17)}),
        anthropic.BadRequestError,
    )
    assert code_of(error) == "invalid_metadata"
    assert client.beta.vaults.retrieve(vault.id) == vault
    error_of(lambda: client.beta.vaults.retrieve("vlt_missing"), anthropic.NotFoundError)
    error_of(lambda: client.beta.vaults.update("vlt_missing", display_name="x"), anthropic.NotFoundError)
    error_of(lambda: client.beta.vaults.archive("vlt_missing"), anthropic.NotFoundError)


def test_vault_list_pages(client: anthropic.Anthropic) -> None:
    ids = [client.beta.vaults.create(display_name=f"page {i}").id for i in range(5)]
    first = body(client.beta.vaults.with_raw_response.list(limit=2))
    assert set(first) == {"data", "next_page"} and len(first["data"]) == 2 and first["next_page"]
    for item in first["data"]:
        assert_exact(BetaManagedAgentsVault, item)
    seen = [v.id for v in client.beta.vaults.list(limit=2)]  # the SDK follows next_page
    assert len(seen) == len(set(seen))
    ours = [i for i in seen if i in ids]
    assert ours == list(reversed(ids))  # newest first
    second = body(client.beta.vaults.with_raw_response.list(limit=2, page=first["next_page"]))
    assert not {v["id"] for v in second["data"]} & {v["id"] for v in first["data"]}
    error_of(lambda: client.beta.vaults.list(limit=101), anthropic.BadRequestError)
    error_of(lambda: client.beta.vaults.list(page="page_garbage"), anthropic.BadRequestError)


# ---- credentials --------------------------------------------------------------------------------------


def test_static_bearer_credential(client: anthropic.Anthropic, vault) -> None:
    creds = client.beta.vaults.credentials.with_raw_response
    auth = bearer()
    created = assert_exact(
        BetaManagedAgentsCredential, body(creds.create(vault.id, auth=auth, display_name="GitHub", metadata={"a": "1"}))
    )
    assert created.id.startswith("vcrd_") and created.type == "vault_credential" and created.vault_id == vault.id
    assert created.auth.model_dump() == {"type": "static_bearer", "mcp_server_url": auth["mcp_server_url"]}
    assert created.display_name == "GitHub" and created.metadata == {"a": "1"}
    got = assert_exact(BetaManagedAgentsCredential, body(creds.retrieve(created.id, vault_id=vault.id)))
    assert got == created

    updated = assert_exact(
        BetaManagedAgentsCredential,
        body(
            creds.update(
                created.id,
                vault_id=vault.id,
                auth={"type": "static_bearer", "token": secret("bearer2")},
                display_name=None,
                metadata={"a": None},
            )
        ),
    )
    assert updated.display_name is None and updated.metadata == {} and updated.updated_at >= created.updated_at
    assert updated.auth == created.auth

    listed = body(creds.list(vault.id))
    assert set(listed) == {"data", "next_page"}
    assert [assert_exact(BetaManagedAgentsCredential, c).id for c in listed["data"]] == [created.id]

    archived = assert_exact(BetaManagedAgentsCredential, body(creds.archive(created.id, vault_id=vault.id)))
    assert archived.archived_at is not None and archived.auth == created.auth
    assert client.beta.vaults.credentials.archive(created.id, vault_id=vault.id) == archived
    assert body(creds.list(vault.id))["data"] == []
    assert [c["id"] for c in body(creds.list(vault.id, include_archived=True))["data"]] == [created.id]

    deleted = assert_exact(BetaManagedAgentsDeletedCredential, body(creds.delete(created.id, vault_id=vault.id)))
    assert deleted.id == created.id and deleted.type == "vault_credential_deleted"
    error_of(lambda: client.beta.vaults.credentials.retrieve(created.id, vault_id=vault.id), anthropic.NotFoundError)


def test_mcp_oauth_credential(client: anthropic.Anthropic, vault) -> None:
    creds = client.beta.vaults.credentials.with_raw_response
    auth = oauth(scope="read write", resource="https://mcp.example.com")
    created = assert_exact(BetaManagedAgentsCredential, body(creds.create(vault.id, auth=auth)))
    assert created.display_name is None and created.metadata == {}
    assert body(creds.retrieve(created.id, vault_id=vault.id))["auth"]["expires_at"] == "2099-01-02T03:04:05.678Z"
    assert created.auth.model_dump(exclude={"expires_at"}) == {
        "type": "mcp_oauth",
        "mcp_server_url": auth["mcp_server_url"],
        "refresh": {
            "client_id": "client-1",
            "token_endpoint": "https://auth.example.com/oauth/token",
            "token_endpoint_auth": {"type": "client_secret_post"},
            "resource": "https://mcp.example.com",
            "scope": "read write",
        },
    }
    updated = assert_exact(
        BetaManagedAgentsCredential,
        body(
            creds.update(
                created.id,
                vault_id=vault.id,
                auth={
                    "type": "mcp_oauth",
                    "access_token": secret("access2"),
                    "expires_at": "2098-01-01T00:00:00Z",
                    # The type sent with a new client secret does not change the stored one.
                    "refresh": {
                        "refresh_token": secret("refresh2"),
                        "scope": "",
                        "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": secret("client2")},
                    },
                },
            )
        ),
    )
    assert updated.auth.expires_at is not None and updated.auth.expires_at.year == 2098
    assert updated.auth.refresh is not None and updated.auth.refresh.scope is None
    assert updated.auth.refresh.token_endpoint_auth.type == "client_secret_post"
    cleared = client.beta.vaults.credentials.update(
        created.id, vault_id=vault.id, auth={"type": "mcp_oauth", "expires_at": None}
    )
    assert cleared.auth.expires_at is None and cleared.auth.refresh == updated.auth.refresh

    minimal = assert_exact(
        BetaManagedAgentsCredential,
        body(creds.create(vault.id, auth={"type": "mcp_oauth", "mcp_server_url": _url(), "access_token": secret("a")})),
    )
    assert minimal.auth.model_dump() == {
        "type": "mcp_oauth",
        "mcp_server_url": minimal.auth.mcp_server_url,
        "expires_at": None,
        "refresh": None,
    }
    none_auth = oauth()
    none_auth["refresh"]["token_endpoint_auth"] = {"type": "none"}
    with_none = assert_exact(BetaManagedAgentsCredential, body(creds.create(vault.id, auth=none_auth)))
    assert with_none.auth.refresh.token_endpoint_auth.type == "none"  # type: ignore[union-attr]


def test_environment_variable_credential(client: anthropic.Anthropic, vault) -> None:
    creds = client.beta.vaults.credentials.with_raw_response
    auth = env_var()
    created = assert_exact(BetaManagedAgentsCredential, body(creds.create(vault.id, auth=auth)))
    assert created.auth.model_dump() == {
        "type": "environment_variable",
        "secret_name": auth["secret_name"],
        "networking": {"type": "limited", "allowed_hosts": ["api.example.com", "*.example.org", "192.0.2.1"]},
        "injection_location": {"header": True, "body": True},  # omitted: both
    }
    header_only = client.beta.vaults.credentials.create(
        vault.id, auth=env_var(networking={"type": "unrestricted"}, injection_location={"header": True})
    )
    assert header_only.auth.injection_location.model_dump() == {"header": True, "body": False}  # type: ignore[union-attr]
    assert header_only.auth.networking.model_dump() == {"type": "unrestricted"}  # type: ignore[union-attr]

    updated = assert_exact(
        BetaManagedAgentsCredential,
        body(
            creds.update(
                created.id,
                vault_id=vault.id,
                auth={
                    "type": "environment_variable",
                    "secret_value": secret("env2"),
                    "networking": {"type": "limited", "allowed_hosts": ["API.Example.NET"]},
                    "injection_location": {"body": False},
                },
            )
        ),
    )
    assert updated.auth.model_dump() == {
        "type": "environment_variable",
        "secret_name": auth["secret_name"],
        "networking": {"type": "limited", "allowed_hosts": ["api.example.net"]},
        "injection_location": {"header": True, "body": False},  # per-field merge
    }


def test_credential_pages(client: anthropic.Anthropic, vault) -> None:
    ids = [client.beta.vaults.credentials.create(vault.id, auth=bearer()).id for _ in range(5)]
    first = body(client.beta.vaults.credentials.with_raw_response.list(vault.id, limit=2))
    assert len(first["data"]) == 2 and first["next_page"]
    seen = [c.id for c in client.beta.vaults.credentials.list(vault.id, limit=2)]
    assert seen == list(reversed(ids))
    error_of(lambda: client.beta.vaults.credentials.list(vault.id, limit=0), anthropic.BadRequestError)


BAD_CREATES: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("unknown type", lambda: {"type": "basic_auth", "token": secret("x")}),
    ("bearer without token", lambda: {k: v for k, v in bearer().items() if k != "token"}),
    ("bearer with empty token", lambda: {**bearer(), "token": ""}),
    ("bearer url not http", lambda: {**bearer(), "mcp_server_url": "ftp://example.com/mcp"}),
    ("bearer url relative", lambda: {**bearer(), "mcp_server_url": "/mcp"}),
    ("bearer extra field", lambda: {**bearer(), "header": "X-Token"}),
    ("oauth without access_token", lambda: {k: v for k, v in oauth().items() if k != "access_token"}),
    ("oauth expired", lambda: {**oauth(), "expires_at": "2001-01-01T00:00:00Z"}),
    ("oauth refresh without client_id", lambda: _drop_refresh("client_id")),
    ("oauth refresh without refresh_token", lambda: _drop_refresh("refresh_token")),
    ("oauth bad token_endpoint", lambda: oauth(token_endpoint="not a url")),
    ("oauth basic without secret", lambda: oauth(token_endpoint_auth={"type": "client_secret_basic"})),
    ("env bad name", lambda: env_var(secret_name="1BAD-NAME")),
    ("env without value", lambda: {k: v for k, v in env_var().items() if k != "secret_value"}),
    ("env without networking", lambda: {k: v for k, v in env_var().items() if k != "networking"}),
    ("env no hosts", lambda: env_var(networking={"type": "limited", "allowed_hosts": []})),
    ("env 17 hosts", lambda: env_var(networking={"type": "limited", "allowed_hosts": [f"h{i}.io" for i in range(17)]})),
    ("env host with port", lambda: env_var(networking={"type": "limited", "allowed_hosts": ["api.example.com:443"]})),
    ("env host url", lambda: env_var(networking={"type": "limited", "allowed_hosts": ["https://api.example.com"]})),
    ("env host path", lambda: env_var(networking={"type": "limited", "allowed_hosts": ["example.com/x"]})),
    ("env host ipv6", lambda: env_var(networking={"type": "limited", "allowed_hosts": ["::1"]})),
    ("env bare tld wildcard", lambda: env_var(networking={"type": "limited", "allowed_hosts": ["*.com"]})),
    ("env inner wildcard", lambda: env_var(networking={"type": "limited", "allowed_hosts": ["api.*.com"]})),
    ("env unrestricted with hosts", lambda: env_var(networking={"type": "unrestricted", "allowed_hosts": ["a.io"]})),
    ("env injection nowhere", lambda: env_var(injection_location={"header": False, "body": False})),
    ("env injection empty", lambda: env_var(injection_location={})),
    ("env injection null", lambda: env_var(injection_location=None)),
]


def _drop_refresh(field: str) -> dict[str, Any]:
    auth = oauth()
    del auth["refresh"][field]
    return auth


@pytest.mark.parametrize(("label", "make"), BAD_CREATES, ids=[label for label, _ in BAD_CREATES])
def test_malformed_credential_changes_nothing(client: anthropic.Anthropic, vault, label: str, make) -> None:
    client.beta.vaults.credentials.create(vault.id, auth=bearer())
    before = all_credentials(client, vault.id)
    error = error_of(lambda: client.beta.vaults.credentials.create(vault.id, auth=make()), anthropic.BadRequestError)
    assert error["type"] == "invalid_request_error"
    assert all_credentials(client, vault.id) == before


def test_credential_field_limits(client: anthropic.Anthropic, vault) -> None:
    for extra in ({"display_name": "x" * 256}, {"metadata": {f"k{i}": "v" for i in range(17)}}):
        error_of(
            lambda extra=extra: client.beta.vaults.credentials.create(vault.id, auth=bearer(), **extra),
            anthropic.BadRequestError,
        )
    assert all_credentials(client, vault.id) == []


def test_update_rules_change_nothing(client: anthropic.Anthropic, vault) -> None:
    creds = client.beta.vaults.credentials
    plain = creds.create(vault.id, auth=oauth() | {"refresh": None})
    with_refresh = creds.create(vault.id, auth=oauth())
    none_endpoint = oauth()
    none_endpoint["refresh"]["token_endpoint_auth"] = {"type": "none"}
    no_secret = creds.create(vault.id, auth=none_endpoint)
    env = creds.create(vault.id, auth=env_var(injection_location={"header": True}))
    before = all_credentials(client, vault.id)
    bad = [
        (plain.id, {"auth": {"type": "static_bearer", "token": secret("t")}}),  # type change
        (plain.id, {"auth": {"type": "mcp_oauth", "refresh": {"refresh_token": secret("r")}}}),  # no refresh config
        (plain.id, {"auth": {"type": "mcp_oauth", "mcp_server_url": _url()}}),  # immutable
        (plain.id, {"auth": {"type": "mcp_oauth", "expires_at": "2000-01-01T00:00:00Z"}}),
        (with_refresh.id, {"auth": {"type": "mcp_oauth", "refresh": {"client_id": "other"}}}),  # immutable
        (
            no_secret.id,
            {
                "auth": {
                    "type": "mcp_oauth",
                    "refresh": {"token_endpoint_auth": {"type": "client_secret_post", "client_secret": secret("c")}},
                }
            },
        ),
        (env.id, {"auth": {"type": "environment_variable", "secret_name": "OTHER"}}),  # immutable
        (env.id, {"auth": {"type": "environment_variable", "injection_location": {"header": False}}}),
        (env.id, {"auth": {"type": "environment_variable", "injection_location": None}}),
        (
            env.id,
            {"auth": {"type": "environment_variable", "networking": {"type": "limited", "allowed_hosts": ["a:1"]}}},
        ),
        (env.id, {"display_name": ""}),
        (env.id, {"metadata": {f"k{i}": "v" for i in range(17)}}),
    ]
    for credential_id, params in bad:
        error_of(lambda c=credential_id, p=params: creds.update(c, vault_id=vault.id, **p), anthropic.BadRequestError)
    assert all_credentials(client, vault.id) == before
    creds.archive(env.id, vault_id=vault.id)
    error = error_of(lambda: creds.update(env.id, vault_id=vault.id, display_name="x"), anthropic.BadRequestError)
    assert code_of(error) == "credential_archived"


def test_unique_targets_and_the_limit(client: anthropic.Anthropic, vault) -> None:
    creds = client.beta.vaults.credentials
    first = creds.create(vault.id, auth=bearer())
    same_url = oauth() | {"mcp_server_url": first.auth.mcp_server_url}  # type: ignore[union-attr]
    error = error_of(lambda: creds.create(vault.id, auth=same_url), anthropic.ConflictError)
    assert error["type"] == "conflict_error" and code_of(error) == "mcp_server_url_taken"
    env = creds.create(vault.id, auth=env_var())
    same_name = env_var(secret_name=env.auth.secret_name)  # type: ignore[union-attr]
    assert code_of(error_of(lambda: creds.create(vault.id, auth=same_name), anthropic.ConflictError)) == (
        "secret_name_taken"
    )
    other = client.beta.vaults.create(display_name="other")
    creds.create(other.id, auth=same_name)  # unique per vault only
    creds.archive(first.id, vault_id=vault.id)  # archiving frees the URL
    creds.create(vault.id, auth=same_url)
    while len(list(creds.list(vault.id, limit=100))) < 20:
        creds.create(vault.id, auth=bearer())
    before = all_credentials(client, vault.id)
    error = error_of(lambda: creds.create(vault.id, auth=bearer()), anthropic.BadRequestError)
    assert code_of(error) == "credential_limit_reached"
    assert all_credentials(client, vault.id) == before


def test_unknown_and_archived_vaults(client: anthropic.Anthropic, vault) -> None:
    creds = client.beta.vaults.credentials
    kept = creds.create(vault.id, auth=bearer())
    other = client.beta.vaults.create(display_name="other")
    for call in (
        lambda: creds.create("vlt_missing", auth=bearer()),
        lambda: creds.list("vlt_missing"),
        lambda: creds.retrieve(kept.id, vault_id="vlt_missing"),
        lambda: creds.retrieve(kept.id, vault_id=other.id),  # not in that vault
        lambda: creds.retrieve("vcrd_missing", vault_id=vault.id),
        lambda: creds.update("vcrd_missing", vault_id=vault.id, display_name="x"),
        lambda: creds.archive("vcrd_missing", vault_id=vault.id),
        lambda: creds.delete(kept.id, vault_id=other.id),
    ):
        error_of(call, anthropic.NotFoundError)
    assert creds.retrieve(kept.id, vault_id=vault.id) == kept

    archived = client.beta.vaults.archive(vault.id)
    cascaded = creds.retrieve(kept.id, vault_id=vault.id)
    assert cascaded.archived_at == archived.archived_at
    error = error_of(lambda: creds.create(vault.id, auth=bearer()), anthropic.BadRequestError)
    assert code_of(error) == "vault_archived"
    client.beta.vaults.delete(vault.id)
    error_of(lambda: creds.retrieve(kept.id, vault_id=vault.id), anthropic.NotFoundError)


def test_secrets_never_logged(
    client: anthropic.Anthropic, db_kind: str, vault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    made = [client.beta.vaults.credentials.create(vault.id, auth=a) for a in (bearer(), oauth(), env_var())]
    for cred in made:
        client.beta.vaults.credentials.update(cred.id, vault_id=vault.id, metadata={"k": "v"})
    client.beta.vaults.archive(vault.id)
    client_side = ("anthropic", "httpx", "httpcore")  # the SDK's own debug logs show what it sends
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith(client_side)]
    if db_kind == "sqlite":  # aiosqlite logs every statement with its parameters at DEBUG
        assert any("vault_credentials" in m for m in server_side)
    assert not [s for s in SECRETS for m in server_side if s in m]


# ---- at rest ------------------------------------------------------------------------------------------


def _stored_rows(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read directly from the database."""

    async def read() -> dict[str, list[tuple[Any, ...]]]:
        db = Database(normalize_database_url(db_url))
        try:
            async with db.read() as conn:
                return {
                    name: [tuple(r) for r in (await conn.execute(select(table))).all()]
                    for name, table in tables.metadata.tables.items()
                }
        finally:
            await db.dispose()

    return asyncio.run(read())


def _stored_secret(db_url: str, credential_id: str) -> str | None:
    for row in _stored_rows(db_url)["vault_credentials"]:
        if row[0] == credential_id:
            return row[-1]  # type: ignore[no-any-return]
    raise AssertionError(f"{credential_id} not stored")


def _raw_sqlite_bytes(db_url: str) -> bytes:
    path = Path(db_url)
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def _file_keys(path: Path) -> list[bytes]:
    return [line.encode() for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_key_file_is_made_private(server: ServerThread) -> None:
    path = server.settings.data_dir / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(_file_keys(path)) == 1 and Fernet(_file_keys(path)[0])


def test_secrets_are_encrypted_at_rest(client: anthropic.Anthropic, server: ServerThread, db_kind: str, vault) -> None:
    auths = [bearer(), oauth(), env_var()]
    made = [client.beta.vaults.credentials.create(vault.id, auth=a) for a in auths]
    mine = {s for a in auths for s in _secrets_in(a)}
    db_url = server.settings.database_url
    dump = repr(_stored_rows(db_url))
    assert not [s for s in mine if s in dump]
    if db_kind == "sqlite":
        raw = _raw_sqlite_bytes(db_url)
        assert not [s for s in mine if s.encode() in raw]
    key = Fernet(_file_keys(server.settings.data_dir / "secret.key")[0])
    plain = [key.decrypt(_stored_secret(db_url, c.id).encode()).decode() for c in made]  # type: ignore[union-attr]
    for auth, text in zip(auths, plain, strict=True):
        assert all(s in text for s in _secrets_in(auth))
    client.beta.vaults.credentials.archive(made[0].id, vault_id=vault.id)
    assert _stored_secret(db_url, made[0].id) is None  # archiving erases the secret
    client.beta.vaults.archive(vault.id)
    assert _stored_secret(db_url, made[1].id) is None and _stored_secret(db_url, made[2].id) is None


def _secrets_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _secrets_in(v)]
    return [value] if isinstance(value, str) and value in SECRETS else []


# ---- sessions -----------------------------------------------------------------------------------------


def test_sessions_attach_vaults(client: anthropic.Anthropic, agent, environment) -> None:
    v1 = client.beta.vaults.create(display_name="v1")
    v2 = client.beta.vaults.create(display_name="v2")
    client.beta.vaults.credentials.create(v1.id, auth=bearer())
    raw = client.beta.sessions.with_raw_response.create(
        agent=agent.id, environment_id=environment.id, vault_ids=[v1.id, v2.id, v1.id]
    )
    session = assert_exact(BetaManagedAgentsSession, body(raw))
    assert session.vault_ids == [v1.id, v2.id]
    assert client.beta.sessions.retrieve(session.id).vault_ids == [v1.id, v2.id]
    assert body(client.beta.sessions.events.with_raw_response.list(session.id)) is not None

    before = len(list(client.beta.sessions.list(limit=100, include_archived=True)))
    error_of(
        lambda: client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[v1.id, "vlt_x"]),
        anthropic.NotFoundError,
    )
    client.beta.vaults.archive(v2.id)
    error = error_of(
        lambda: client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[v2.id]),
        anthropic.BadRequestError,
    )
    assert code_of(error) == "vault_archived"
    assert len(list(client.beta.sessions.list(limit=100, include_archived=True))) == before
    error_of(lambda: client.beta.sessions.update(session.id, vault_ids=[v1.id]), anthropic.BadRequestError)
    client.beta.vaults.delete(v1.id)  # sessions keep the ids of deleted vaults
    assert client.beta.sessions.retrieve(session.id).vault_ids == [v1.id, v2.id]


# ---- keys and rotation --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server of its own (its own key file), since rotation changes the key."""
    tmp = tmp_path_factory.mktemp(f"vault-keys-{db_kind}")
    with serving(db_kind, tmp, api_key=API_KEY, data_dir=tmp / "data", workers=0) as srv:
        yield srv


def _rotate(settings: Settings, *args: str, **env: str) -> Any:
    result = CliRunner().invoke(
        cli_app,
        ["secrets", "rotate", "--database", settings.database_url, *args],
        env={"CORRAL_DATA_DIR": str(settings.data_dir), "CORRAL_SECRET_KEY": "", **env},
    )
    return result


def test_rotation_reencrypts_and_the_server_keeps_working(own_server: ServerThread) -> None:
    client = anthropic.Anthropic(base_url=own_server.url, api_key=API_KEY, max_retries=0)
    settings = own_server.settings
    key_path = settings.data_dir / "secret.key"
    vault = client.beta.vaults.create(display_name="rotating")
    auths = [bearer(), oauth(), env_var()]
    made = [client.beta.vaults.credentials.create(vault.id, auth=a) for a in auths]
    repo_token = secret("repo")  # a repository resource's token is a stored secret too
    agent = client.beta.agents.create(name="rotation", model="claude-sonnet-4-6")
    env = client.beta.environments.create(name=f"rotation-{uuid.uuid4().hex[:8]}")
    repo = {"type": "github_repository", "url": "https://git.example.com/a/b", "authorization_token": repo_token}
    client.beta.sessions.create(agent=agent.id, environment_id=env.id, resources=[repo])
    (old_key,) = _file_keys(key_path)
    before = {c.id: _stored_secret(settings.database_url, c.id) for c in made}

    result = _rotate(settings, "--keep-old")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 4 secret(s)" in result.output
    ((*_, stored_token, _),) = _stored_rows(settings.database_url)["session_resource_secrets"]
    assert repo_token in Fernet(_file_keys(key_path)[0]).decrypt(stored_token.encode()).decode()
    keys = _file_keys(key_path)
    assert len(keys) == 2 and keys[1] == old_key and stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    new = Fernet(keys[0])
    for cred, auth in zip(made, auths, strict=True):
        token = _stored_secret(settings.database_url, cred.id)
        assert token is not None and token != before[cred.id]
        text = new.decrypt(token.encode()).decode()  # under the new key alone
        assert all(s in text for s in _secrets_in(auth))
        with pytest.raises(InvalidToken):
            Fernet(old_key).decrypt(token.encode())

    result = _rotate(settings)  # again, dropping the old keys this time
    assert result.exit_code == 0, result.output
    (newest,) = _file_keys(key_path)
    assert newest not in keys
    # The running server reads the new key file: a merge update must decrypt the rotated secret.
    oauth_cred = made[1]
    client.beta.vaults.credentials.update(
        oauth_cred.id, vault_id=vault.id, auth={"type": "mcp_oauth", "access_token": secret("after")}
    )
    text = Fernet(newest).decrypt(_stored_secret(settings.database_url, oauth_cred.id).encode()).decode()  # type: ignore[union-attr]
    assert "sk-after-" in text and all(s in text for s in _secrets_in(auths[1]) if "access" not in s)
    fresh = client.beta.vaults.credentials.create(vault.id, auth=bearer())
    Fernet(newest).decrypt(_stored_secret(settings.database_url, fresh.id).encode())  # type: ignore[union-attr]


@pytest.fixture
def db_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    yield from database_url(db_kind, tmp_path)


def test_rotation_with_env_keys(db_url: str, tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    values = [secret("envmode") for _ in range(3)]

    async def seed() -> list[str]:
        store = Store(normalize_database_url(db_url))
        try:
            await store.migrate()
            vault = await create_vault(store, VaultCreate(display_name="env keys"))
            made = []
            for value in values:
                params = CredentialCreate.model_validate({"auth": {**bearer(), "token": value}})
                made.append((await create_credential(store, SecretBox([old]), vault.id, params)).id)
            return made
        finally:
            await store.close()

    ids = asyncio.run(seed())
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data")
    result = _rotate(settings, CORRAL_SECRET_KEY=f"{new.decode()},{old.decode()}")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 3 secret(s)" in result.output and "remove the other keys" in result.output
    assert not (tmp_path / "data" / "secret.key").exists()
    for credential_id, value in zip(ids, values, strict=True):
        token = _stored_secret(db_url, credential_id)
        assert token is not None and value in Fernet(new).decrypt(token.encode()).decode()

    # Secrets no configured key can read: reported, exit 1, left as they were.
    result = _rotate(settings, CORRAL_SECRET_KEY=Fernet.generate_key().decode())
    assert result.exit_code == 1 and "could not be decrypted" in result.output
    token = _stored_secret(db_url, ids[-1])
    assert token is not None and values[-1] in Fernet(new).decrypt(token.encode()).decode()


def test_missing_key_with_stored_secrets_is_refused(own_server: ServerThread, tmp_path: Path) -> None:
    client = anthropic.Anthropic(base_url=own_server.url, api_key=API_KEY, max_retries=0)
    vault = client.beta.vaults.create(display_name="needs its key")
    client.beta.vaults.credentials.create(vault.id, auth=bearer())
    settings = own_server.settings.model_copy(update={"data_dir": tmp_path / "elsewhere"})

    async def start() -> None:
        runtime = Runtime(settings)
        try:
            await runtime.secret_keys()
        finally:
            await runtime.store.close()

    with pytest.raises(RuntimeError, match="no key file"):
        asyncio.run(start())
    assert not (tmp_path / "elsewhere" / "secret.key").exists()
    result = _rotate(settings)
    assert result.exit_code == 1 and "nothing to rotate" in result.output
