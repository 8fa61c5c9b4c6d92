"""Settings: every knob of a corral process, read from `CORRAL_*` environment variables or passed in."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

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
    workers: int = Field(default=1, description="Harness workers run inside `corral serve`.", ge=0)
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

    @property
    def async_database_url(self) -> str:
        return normalize_database_url(self.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.async_database_url.startswith("sqlite")
