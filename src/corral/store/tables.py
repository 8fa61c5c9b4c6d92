"""The database schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Times are integer microseconds since the epoch (`BigInteger`), so both dialects sort and compare them
the same way. Resource bodies are the wire objects as JSON text; the columns beside them exist only
to filter, order and enforce uniqueness.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Column("body", Text, nullable=False),
    Index("ix_agents_created", "created_at", "id"),
)

agent_versions = Table(
    "agent_versions",
    metadata,
    Column("agent_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    PrimaryKeyConstraint("agent_id", "version"),
)

environments = Table(
    "environments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Column("body", Text, nullable=False),
    Index("ix_environments_created", "created_at", "id"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Column("agent_id", String(64), nullable=False),
    Column("agent_version", Integer, nullable=False),
    Column("environment_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("usage", Text, nullable=False),
    # The event log's head: the seq of the last event appended (0 = none yet).
    Column("last_seq", BigInteger, nullable=False, default=0),
    # Scheduler state: input waiting for a worker, and which worker holds the session until when.
    Column("needs_work", Boolean, nullable=False, default=False),
    Column("lease_owner", String(128)),
    Column("lease_until", BigInteger),
    Index("ix_sessions_created", "created_at", "id"),
    Index("ix_sessions_agent", "agent_id", "agent_version"),
    Index("ix_sessions_work", "needs_work", "lease_until"),
)

events = Table(
    "events",
    metadata,
    Column("session_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("type", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("processed_at", BigInteger),
    Column("body", Text, nullable=False),
    # For replies and results: the id of the event answered (tool use awaiting a result or confirmation).
    Column("ref", String(64)),
    # The primary key is the fence: two writers can never both append the same position.
    PrimaryKeyConstraint("session_id", "seq"),
    # Only answers carry `ref`: a partial index keeps every other append from paying for it. Type
    # filters scan the session's range of the primary key instead of keeping a (session, type) index:
    # each index costs every append a page write (see docs/benchmarks.md).
    Index(
        "ix_events_session_ref",
        "session_id",
        "ref",
        sqlite_where=text("ref IS NOT NULL"),
        postgresql_where=text("ref IS NOT NULL"),
    ),
)

# What the harness must remember beyond the wire events, keyed like the side effect it records:
# `model_output` (key = span start event id): the model's raw content blocks and tool-use id map;
# `tool_run` (key = "run:" + tool-use event id): written before a tool runs, so a crash never re-runs it;
# `input` (key = "in:" + client event id): where in the log queued input was taken in (or that it was flushed);
# `compaction` (key = compaction event id): the summary that replaced earlier context.
harness_records = Table(
    "harness_records",
    metadata,
    Column("session_id", String(64), nullable=False),
    Column("key", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    PrimaryKeyConstraint("session_id", "key"),
)

# Vaults and their credentials. `body` holds the wire fields that are not columns (never a secret);
# `secret` is the credential's secret fields as one Fernet token (`vault/crypto.py`), null once archived.
# `target` is what a credential is matched by ("mcp:<server url>" or "env:<secret name>"): unique among
# a vault's active credentials.
vaults = Table(
    "vaults",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Column("body", Text, nullable=False),
    Index("ix_vaults_created", "created_at", "id"),
)

vault_credentials = Table(
    "vault_credentials",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("vault_id", String(64), nullable=False),
    Column("target", String(2100), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Column("body", Text, nullable=False),
    Column("secret", Text),
    Index("ix_vault_credentials_vault", "vault_id", "created_at", "id"),
    Index(
        "uq_vault_credentials_target",
        "vault_id",
        "target",
        unique=True,
        sqlite_where=text("archived_at IS NULL"),
        postgresql_where=text("archived_at IS NULL"),
    ),
)

# Uploaded files: the metadata here (`body` is the `FileMetadata` JSON), the bytes on local disk under
# `<data dir>/files/<id>`. `scope_id` is the session a file was produced in (null for uploads).
files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("scope_id", String(64)),
    Column("body", Text, nullable=False),
    Index("ix_files_created", "created_at", "id"),
    Index("ix_files_scope", "scope_id", "created_at", "id"),
)

# The write-only `authorization_token` of a session's `github_repository` resources, one Fernet token per
# resource (`vault/crypto.py`), with the repository URL it is for. Kept out of the session body, which is
# returned by the API; read by the egress proxy's credential broker on every request to the repository.
session_resource_secrets = Table(
    "session_resource_secrets",
    metadata,
    Column("resource_id", String(64), primary_key=True),
    Column("session_id", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_session_resource_secrets_session", "session_id"),
)
