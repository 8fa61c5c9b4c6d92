"""The documentation keeps up with the code (in the style of datasette's test_docs.py).

Each check is parametrized from the code itself, so a new setting, route, event type, error type,
error code or CLI command fails here, by name, until `docs/` mentions it.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

import corral
import corral.errors
import corral.schemas.events
from corral.api import errors as api_errors
from corral.api.app import create_app
from corral.cli import app as cli_app
from corral.config import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
SRC = Path(corral.__file__).resolve().parent


def _doc(name: str) -> str:
    return (DOCS / name).read_text()


# ---- what the code has ---------------------------------------------------------------------------


def _env_vars() -> list[str]:
    """The environment variable of every Settings field: its alias, or `CORRAL_<FIELD>`."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.append(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


def _api_routes() -> list[str]:
    """`METHOD /v1/...` for every API route of an app built (not started) on a throwaway database.

    Recent FastAPI versions keep included routers as nested entries of `app.routes`, so the routes
    are read from the OpenAPI schema as well as from `app.routes`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(database_url=str(Path(tmp) / "docs.db")))
        found: set[tuple[str, str]] = set()
        for route in app.routes:
            path, methods = getattr(route, "path", ""), getattr(route, "methods", None) or set()
            found.update((m, path) for m in methods if m != "HEAD")
        for path, operations in app.openapi()["paths"].items():
            found.update((m.upper(), path) for m in operations)
    return sorted(f"{method} {path}" for method, path in found if path.startswith("/v1/"))


def _event_types() -> list[str]:
    """The `type` of every persisted event class (the `Event` subclasses) in `corral.schemas.events`."""
    module = corral.schemas.events
    types = set()
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, module.Event) and cls is not module.Event and "type" in cls.model_fields:
            types.add(cls.model_fields["type"].default)
    return sorted(types)


def _error_types() -> list[str]:
    """The `error_type` of `ApiError` and every subclass of it in `corral.errors`."""
    return sorted(
        {
            cls.error_type
            for _, cls in inspect.getmembers(corral.errors, inspect.isclass)
            if issubclass(cls, corral.errors.ApiError)
        }
    )


def _error_codes() -> list[str]:
    """Every `code="..."` (the `error.details.error_code` values) raised in the source."""
    codes = set()
    for path in SRC.rglob("*.py"):
        codes.update(re.findall(r"\bcode=\"([a-z0-9_]+)\"", path.read_text()))
    return sorted(codes)


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from _walk(sub, (*path, name))


CLI_COMMANDS = dict(_walk(typer.main.get_command(cli_app), ("corral",)))


def _cli_options() -> list[tuple[str, str]]:
    """(command, --option) for every long option of every command, `--help` aside."""
    pairs = []
    for path, command in CLI_COMMANDS.items():
        for param in command.params:
            pairs.extend((" ".join(path), opt) for opt in param.opts if opt.startswith("--") and opt != "--help")
    return pairs


# ---- the checks -----------------------------------------------------------------------------------


def test_checks_see_the_code() -> None:
    """Guard against a check that silently covers nothing (e.g. a framework change hiding routes)."""
    assert "CORRAL_DATABASE_URL" in _env_vars()
    assert "POST /v1/sessions/{session_id}/events" in _api_routes()
    assert "user.message" in _event_types()
    assert "not_found_error" in _error_types()
    assert ("corral", "serve") in CLI_COMMANDS


@pytest.mark.parametrize("env_var", _env_vars())
def test_setting_is_documented(env_var: str) -> None:
    assert f"`{env_var}`" in _doc("configuration.md")


@pytest.mark.parametrize("route", _api_routes())
def test_route_is_documented(route: str) -> None:
    assert f"`{route}`" in _doc("api.md")


@pytest.mark.parametrize("event_type", _event_types())
def test_event_type_is_documented(event_type: str) -> None:
    assert f"`{event_type}`" in _doc("events.md")


@pytest.mark.parametrize("event_type", corral.schemas.events.EVENT_TYPES)
def test_api_event_type_is_mentioned(event_type: str) -> None:
    """Every event type of the API is either documented or listed as not supported yet."""
    assert f"`{event_type}`" in _doc("events.md")


@pytest.mark.parametrize("error_type", _error_types())
def test_error_type_is_documented(error_type: str) -> None:
    assert f"`{error_type}`" in _doc("api.md")


@pytest.mark.parametrize("error_type", sorted(set(getattr(api_errors, "_TYPE_BY_STATUS", {}).values())))
def test_status_error_type_is_documented(error_type: str) -> None:
    assert f"`{error_type}`" in _doc("api.md")


@pytest.mark.parametrize("code", _error_codes())
def test_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in _doc("api.md")


def _section(text: str, heading: str) -> str | None:
    """The text under a markdown heading whose title is exactly `heading` (up to the next heading)."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, flags=re.MULTILINE)
    if match is None:
        return None
    rest = text[match.end() :]
    following = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, flags=re.MULTILINE)
    return rest[: following.start()] if following else rest


@pytest.mark.parametrize("command", [" ".join(path) for path in CLI_COMMANDS])
def test_cli_command_is_documented(command: str) -> None:
    assert _section(_doc("configuration.md"), f"`{command}`") is not None, f"no heading `{command}`"


@pytest.mark.parametrize(("command", "option"), _cli_options())
def test_cli_option_is_documented(command: str, option: str) -> None:
    section = _section(_doc("configuration.md"), f"`{command}`") or ""
    assert f"`{option}`" in section
