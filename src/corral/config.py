"""Settings: every knob of a corral process, read from `CORRAL_*` environment variables or passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "normalize_database_url"]


def normalize_database_url(url: str) -> str:
    """Accept the plain URLs users write and pick the async driver SQLAlchemy needs."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and "+aiosqlite" not in url:
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if "://" not in url:  # a bare path
        return "sqlite+aiosqlite:///" + str(Path(url).expanduser())
    return url


class Settings(BaseSettings):
    """Configuration of the API server and workers. Each field is `CORRAL_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        default="sqlite:///corral.db",
        description="Database URL: a SQLite file (default `corral.db` in the current directory) "
        "or `postgresql://user@host:port/db`.",
    )
    api_key: str | None = Field(
        default=None,
        description="A key accepted on every request (besides keys made with `corral keys create`). "
        "When no key is set and none were created, the server accepts any request.",
    )
    data_dir: Path = Field(
        default=Path(".corral"),
        description="Where session working directories and other local state live.",
    )
    max_file_bytes: int = Field(
        default=500 * 1024 * 1024,
        description="Largest file `POST /v1/files` accepts, in bytes (larger uploads get 413).",
        gt=0,
    )
    workers: int = Field(
        default=32,
        description="Harness workers in this process: how many sessions it advances at once (0 = API only).",
        ge=0,
    )
    lease_seconds: float = Field(
        default=30.0, description="How long a worker's claim on a session lasts without a heartbeat.", gt=0
    )
    poll_interval: float = Field(
        default=0.5,
        description="How often workers and streams look for work and events written by other processes.",
        gt=0,
    )
    anthropic_api_key: str | None = Field(
        default=None,
        validation_alias="ANTHROPIC_API_KEY",
        description="Key for the Anthropic Messages API (read from `ANTHROPIC_API_KEY`).",
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias="ANTHROPIC_BASE_URL",
        description="Base URL of the Anthropic Messages API (read from `ANTHROPIC_BASE_URL`).",
    )
    openai_base_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible chat-completions server (vLLM, Ollama, LiteLLM...). "
        "Agents whose model starts with `openai/` use it.",
    )
    openai_api_key: str | None = Field(default=None, description="Key for the OpenAI-compatible server.")
    model_max_retries: int = Field(default=4, description="Retries of a failed model call before the turn ends.", ge=0)
    model_retry_base_seconds: float = Field(default=1.0, description="First retry delay; doubles each retry.", ge=0)
    sse_ping_seconds: float = Field(default=15.0, description="Keep-alive interval on event streams.", gt=0)
    max_output_tokens: int = Field(default=8192, description="`max_tokens` of each model call.", gt=0)
    max_model_calls_per_turn: int = Field(
        default=200, description="Model calls one turn may make before it stops with an error.", gt=0
    )
    max_tool_calls_per_turn: int = Field(
        default=500, description="Tool calls one turn may make before it stops with an error.", gt=0
    )
    compact_at_tokens: int = Field(
        default=160_000,
        description="Compact the context when a model call's input plus output reaches this many tokens.",
        gt=0,
    )
    max_compactions: int = Field(default=20, description="Compactions allowed in one session.", ge=0)
    model_prices: dict[str, list[float]] | None = Field(
        default=None,
        description="Extra list prices for budgets, as JSON: model-id prefix -> "
        "[input, output, cache read, cache write] USD per million tokens.",
    )
    sandbox: str = Field(
        default="bwrap",
        description="Where agent-toolset tools run: `bwrap` (isolated, default), `gvisor` (isolated behind "
        "gVisor's user-space kernel; needs `runsc`), or `unsafe-no-isolation` (plain processes on this machine: "
        "only for trusted agents on machines without user namespaces).",
    )
    sandbox_provision: Literal["lazy", "eager"] = Field(
        default="lazy",
        description="When a session's sandbox starts: `lazy` (on its first tool call; turns without tools never "
        "start one) or `eager` (when a turn of a session whose agent has sandbox tools starts, in the background "
        "beside the first model call).",
    )
    sandbox_runsc: str | None = Field(
        default=None,
        description="Path of gVisor's `runsc` binary for `CORRAL_SANDBOX=gvisor` (default: `runsc` on `PATH` "
        "or in `/usr/local/bin`).",
    )
    searxng_url: str | None = Field(
        default=None,
        description="A SearXNG instance (JSON format enabled) that answers the `web_search` tool; "
        "without one, `web_search` returns an error result.",
    )
    web_fetch_allowed_networks: list[str] | None = Field(
        default=None,
        description='Non-public networks `web_fetch` may reach anyway, as JSON, e.g. `["10.0.0.0/8"]` '
        "(by default it refuses loopback, private and link-local addresses).",
    )
    mcp_timeout_seconds: float = Field(
        default=30.0,
        description="Time allowed to connect to an MCP server and list its tools (and to refresh an OAuth token).",
        gt=0,
    )
    mcp_tool_timeout_seconds: float = Field(
        default=300.0, description="Time allowed for one MCP tool call, once connected.", gt=0
    )
    sandbox_prewarm: int = Field(
        default=1,
        description="Sandboxes kept started and ready for new sessions, per recently used environment recipe "
        "(0 = start each on the session's first tool call).",
        ge=0,
    )
    sandbox_idle_seconds: float = Field(
        default=600.0, description="Close an idle session's sandbox after this long (its files are kept).", gt=0
    )
    sandbox_egress_allowed_networks: list[str] | None = Field(
        default=None,
        description="Non-public networks the sandboxes' egress proxy may connect to anyway, as JSON, e.g. "
        '`["10.0.0.0/8"]` (by default it refuses loopback, private and link-local addresses, whatever the '
        "environment's networking says).",
    )
    sandbox_pip_index_url: str | None = Field(
        default=None,
        description="The package index environment recipes install `pip` packages from (a PEP 503 simple index, "
        "e.g. a mirror); unset: PyPI. Its host is opened to the recipe build, not to the agent.",
    )
    sandbox_npm_registry: str | None = Field(
        default=None,
        description="The registry environment recipes install `npm` packages from; unset: registry.npmjs.org. "
        "Its host is opened to the recipe build, not to the agent.",
    )
    sandbox_recipe_timeout: float = Field(
        default=600.0,
        description="Longest an environment recipe's package installation may take, in seconds; "
        "after that the build fails and the tool call gets an error.",
        gt=0,
    )
    egress_upstream_ca_file: Path | None = Field(
        default=None,
        description="PEM file of extra CA certificates the egress proxy trusts, besides the system store, when "
        "it opens TLS to a server on behalf of a sandbox whose requests carry credentials (e.g. an internal "
        "git server's CA).",
    )

    secret_key: SecretStr | None = Field(
        default=None,
        description="Keys that encrypt vault credential secrets at rest: Fernet keys (`corral secrets generate-key`), "
        "comma-separated; the first encrypts, all decrypt. Unset: the key file is used.",
    )
    secret_key_file: Path | None = Field(
        default=None,
        description="Key file used when `CORRAL_SECRET_KEY` is unset (default `<data dir>/secret.key`, "
        "created with mode 0600 on the server's first start).",
    )

    @property
    def async_database_url(self) -> str:
        return normalize_database_url(self.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.async_database_url.startswith("sqlite")
