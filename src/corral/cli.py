"""The `corral` command: `corral serve` (the default), `corral migrate`, `corral keys`, `corral agents`,
`corral secrets`, `corral demo`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

from . import __version__
from .config import Settings
from .demo import DEMO_AGENT, run_demo
from .listen import listen_socket
from .vault.cli import secrets_app

app = typer.Typer(
    help="corral: a self-hosted runtime for long-running AI agents, speaking the Managed Agents API.",
    no_args_is_help=False,
    add_completion=False,
)
keys_app = typer.Typer(help="API keys accepted by the server (stored hashed).", no_args_is_help=True)
agents_app = typer.Typer(help="Agent definitions, e.g. from YAML files checked into a repo.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(agents_app, name="agents")
app.add_typer(secrets_app, name="secrets")

DatabaseOption = typer.Option(
    None,
    "--database",
    "-d",
    envvar="CORRAL_DATABASE_URL",
    help="SQLite file path or URL, or postgresql://user@host:port/db. Default: corral.db here.",
    show_default=False,
)


def _settings(database: str | None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if database:
        values["database_url"] = database
    return Settings(**values)


SandboxOption = typer.Option(
    None,
    "--sandbox",
    envvar="CORRAL_SANDBOX",
    help="Where agent tools run: bwrap (isolated, default), gvisor (isolated, user-space kernel) "
    "or unsafe-no-isolation (trusted agents only).",
    show_default=False,
)


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """With no command, `corral` runs `corral serve` with its defaults."""
    if version:
        typer.echo(f"corral {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        serve(host="127.0.0.1", port=8000, database=None, workers=None, sandbox=None, log_level="info")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", "-p", help="Port to listen on; 0 picks a free one."),
    database: str | None = DatabaseOption,
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-w",
        help="Sessions this process advances at once (default 32, or CORRAL_WORKERS; 0 = API only).",
    ),
    sandbox: str | None = SandboxOption,
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the API (and run harness workers) on the embedded SQLite file or PostgreSQL."""
    import uvicorn

    from .api.app import create_app

    settings = _settings(database, workers=workers, sandbox=sandbox)
    sock = listen_socket(host, port)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    typer.echo(f"corral {__version__} serving on http://{shown_host}:{bound_port}", err=False)
    typer.echo(f"database: {_redact(settings.database_url)}")
    if settings.workers:
        typer.echo(f"workers: {settings.workers}; {_model_status(settings)}")
        typer.echo(_tools_status(settings))
    else:
        typer.echo("workers: none (API only; run `corral worker` against the same database)")
    sys.stdout.flush()
    config = uvicorn.Config(create_app(settings), log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    asyncio.run(server.serve(sockets=[sock]))


def _tools_status(settings: Settings) -> str:
    from .sandbox.runner import SandboxToolRunner

    return SandboxToolRunner.describe(settings)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


@app.command()
def worker(
    database: str | None = DatabaseOption,
    workers: int | None = typer.Option(
        None, "--workers", "-w", help="Sessions this process advances at once (default 32, or CORRAL_WORKERS)."
    ),
    sandbox: str | None = SandboxOption,
) -> None:
    """Run harness workers only (no API), sharing the database with servers and other workers."""
    from .runtime import Runtime

    settings = _settings(database, workers=workers, sandbox=sandbox)

    async def run() -> None:
        runtime = Runtime(settings)
        await runtime.start()
        assert runtime.workers is not None
        typer.echo(
            f"corral worker {runtime.workers.owner} running {settings.workers} workers on "
            f"{_redact(settings.database_url)}"
        )
        typer.echo(_model_status(settings))
        typer.echo(_tools_status(settings))
        try:
            await asyncio.Event().wait()
        finally:
            await runtime.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def _model_status(settings: Settings) -> str:
    """One line on which model backends are configured, and how to configure one if none is."""
    from .models.router import ModelRouter

    router = ModelRouter(
        anthropic_api_key=settings.anthropic_api_key,
        anthropic_base_url=settings.anthropic_base_url,
        openai_base_url=settings.openai_base_url,
        openai_api_key=settings.openai_api_key,
    )
    return router.describe()


@app.command()
def migrate(database: str | None = DatabaseOption) -> None:
    """Create or upgrade the database schema (serve does this on start too)."""
    from .store.store import Store

    async def run() -> None:
        store = Store(_settings(database).async_database_url)
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(run())
    typer.echo("database is up to date")


def _with_store(database: str | None, action: Any) -> Any:
    from .store.store import Store

    async def run() -> Any:
        store = Store(_settings(database).async_database_url)
        try:
            await store.migrate()
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


@keys_app.command("create")
def keys_create(
    name: str = typer.Option("default", "--name", "-n", help="A label for the key."),
    database: str | None = DatabaseOption,
) -> None:
    """Make an API key. It is printed once; only its hash is stored."""
    info, secret = _with_store(database, lambda store: store.keys.create(name))
    typer.echo(f"created key {info.id} ({name}); keep it, it is not shown again:", err=True)
    typer.echo(secret)


@keys_app.command("list")
def keys_list(database: str | None = DatabaseOption) -> None:
    """List keys (ids and names, never the keys)."""
    for info in _with_store(database, lambda store: store.keys.list()):
        state = "revoked" if info.revoked_at else "active"
        typer.echo(f"{info.id}\t{info.name}\t{state}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="Id of the key (key_…)."), database: str | None = DatabaseOption
) -> None:
    """Revoke a key: requests using it are refused from then on."""
    if not _with_store(database, lambda store: store.keys.revoke(key_id)):
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def _load_definition(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold one mapping (the agent definition)")
    return data


@agents_app.command("create")
def agents_create(
    file: str = typer.Option(..., "--file", "-f", help="YAML or JSON agent definition ('-' for stdin)."),
    database: str | None = DatabaseOption,
) -> None:
    """Create an agent from a YAML/JSON file with the fields of `POST /v1/agents`; prints the agent."""
    from pydantic import ValidationError

    from .errors import ApiError
    from .schemas.agents import AgentCreate
    from .service.agents import create_agent

    try:
        params = AgentCreate.model_validate(_load_definition(file))
        agent = _with_store(database, lambda store: create_agent(store, params))
    except (ValidationError, ApiError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(agent.model_dump(mode="json"), indent=2))


@agents_app.command("update")
def agents_update(
    agent_id: str = typer.Argument(..., help="Agent to update (a new version is made)."),
    file: str = typer.Option(..., "--file", "-f", help="YAML or JSON with the fields of `POST /v1/agents/{id}`."),
    database: str | None = DatabaseOption,
) -> None:
    """Update an agent from a YAML/JSON file; prints the new version."""
    from pydantic import ValidationError

    from .errors import ApiError
    from .schemas.agents import AgentUpdate
    from .service.agents import update_agent

    try:
        params = AgentUpdate.model_validate(_load_definition(file))
        agent = _with_store(database, lambda store: update_agent(store, agent_id, params))
    except (ValidationError, ApiError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(agent.model_dump(mode="json"), indent=2))


@app.command()
def demo(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="Base URL of a running corral server."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="CORRAL_API_KEY",
        help="API key for the server, if it requires one.",
        show_default=False,
    ),
    message: str = typer.Option(
        "Hello! What is in your workspace?", "--message", "-m", help="The user message to send."
    ),
    file: str | None = typer.Option(
        None,
        "--file",
        "-f",
        help="Agent definition (YAML/JSON, as for `agents create`) to use instead of the built-in demo agent.",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Model id to use instead of the definition's (e.g. claude-sonnet-4-6).",
        show_default=False,
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the session to go idle."),
) -> None:
    """Run one session end to end against a running server and print its events as they stream."""
    try:
        definition = dict(_load_definition(file) if file else DEMO_AGENT)
    except (OSError, yaml.YAMLError) as exc:
        typer.echo(f"error: cannot read {file}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if model:
        definition["model"] = model
    if not isinstance(definition.get("name"), str) or not definition.get("model"):
        typer.echo("error: the agent definition needs a name and a model", err=True)
        raise typer.Exit(1)
    try:
        code = asyncio.run(run_demo(url, api_key, message, definition, timeout))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
