"""The `agent_toolset_20260401` as the model sees it: names, descriptions, input schemas, annotations.

Input models follow the SDK's `BetaManagedAgentsAgentToolset20260401*Input` types (web_fetch/web_search are
not in the SDK; they take `{url}` / `{query}` like the Messages API server tools). Annotations feed
permission policies and the re-run-after-crash decision: a `read_only` tool changes nothing, an
`idempotent` one may safely run twice with the same input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "TOOLS",
    "TOOL_NAMES",
    "BashInput",
    "EditInput",
    "GlobInput",
    "GrepInput",
    "ReadInput",
    "ToolDef",
    "WebFetchInput",
    "WebSearchInput",
    "WriteInput",
    "model_tool_definitions",
    "validate_input",
]


class _Input(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BashInput(_Input):
    command: str | None = Field(default=None, description="The command to run. Omit only when restart is true.")
    restart: bool | None = Field(default=None, description="Restart the persistent shell instead of running a command.")
    timeout_ms: int | None = Field(
        default=None, ge=0, description="Timeout for this command in milliseconds (0 or omitted: 120000)."
    )

    @model_validator(mode="after")
    def _command_or_restart(self) -> BashInput:
        if not self.restart and not self.command:
            raise ValueError("command is required unless restart is true")
        return self


class ReadInput(_Input):
    file_path: str = Field(min_length=1, description="Path of the file, absolute or relative to /workspace.")
    view_range: list[int] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[start_line, end_line], 1-indexed and inclusive; end_line <= 0 reads to the end.",
    )


class WriteInput(_Input):
    file_path: str = Field(min_length=1, description="Path of the file, absolute or relative to /workspace.")
    content: str = Field(description="The full new contents of the file.")


class EditInput(_Input):
    file_path: str = Field(min_length=1, description="Path of the file, absolute or relative to /workspace.")
    old_string: str = Field(min_length=1, description="Exact text to find.")
    new_string: str = Field(description="Text to put in its place.")
    replace_all: bool | None = Field(
        default=None, description="Replace every occurrence; otherwise old_string must occur exactly once."
    )


class GlobInput(_Input):
    pattern: str = Field(min_length=1, description="Relative glob pattern; ** matches any depth, e.g. **/*.py.")
    path: str | None = Field(default=None, description="Directory to search under (default: /workspace).")


class GrepInput(_Input):
    pattern: str = Field(min_length=1, description="Regular expression (Python re syntax).")
    path: str | None = Field(default=None, description="File or directory to search (default: /workspace).")


class WebFetchInput(_Input):
    url: str = Field(min_length=1, description="The http(s) URL to fetch.")


class WebSearchInput(_Input):
    query: str = Field(min_length=1, description="The search query.")


@dataclass(frozen=True)
class ToolDef:
    """One agent-toolset tool: what the model is told, how its input is checked, how it may be retried."""

    name: str
    description: str
    input_model: type[_Input]
    read_only: bool
    idempotent: bool
    in_sandbox: bool
    """Executed by the session's sandbox (the web tools run on the server, through the egress proxy)."""

    def tool_definition(self) -> dict[str, Any]:
        """The Messages API tool dict."""
        return {"name": self.name, "description": self.description, "input_schema": _schema(self.input_model)}


_DEFS = [
    ToolDef(
        "bash",
        "Execute bash commands in a persistent shell session. The working directory, exported "
        "variables and background jobs carry over between calls; the shell starts in /workspace. stdout "
        "and stderr are merged; output over 100 KiB keeps only its end. A non-zero exit status is "
        "reported as an error. Commands time out after 120 s unless timeout_ms says otherwise; a timeout "
        "kills the shell. Use restart to get a fresh shell.",
        BashInput,
        False,
        False,
        True,
    ),
    ToolDef(
        "read",
        "Read a file from the local filesystem, including text, images (png, jpg, gif, webp) and "
        "PDFs. Text files up to 256 KiB are returned whole; use view_range for parts of larger ones.",
        ReadInput,
        True,
        True,
        True,
    ),
    ToolDef(
        "write",
        "Write a file to the local filesystem, replacing it if it exists and creating parent directories as needed.",
        WriteInput,
        False,
        True,
        True,
    ),
    ToolDef(
        "edit",
        "Perform exact string replacement in a file. old_string must occur exactly once unless replace_all is true.",
        EditInput,
        False,
        False,
        True,
    ),
    ToolDef(
        "glob",
        "Fast file pattern matching using glob patterns (e.g. **/*.ts). Returns matching paths, "
        "newest first, at most 200.",
        GlobInput,
        True,
        True,
        True,
    ),
    ToolDef(
        "grep",
        "Text search using regex patterns. Returns matching lines as path:line:text; skips binary "
        "files, .git and node_modules.",
        GrepInput,
        True,
        True,
        True,
    ),
    ToolDef("web_fetch", "Fetch content from a URL and return it as text.", WebFetchInput, True, True, False),
    ToolDef("web_search", "Search the web for information.", WebSearchInput, True, True, False),
]
TOOLS: MappingProxyType[str, ToolDef] = MappingProxyType({d.name: d for d in _DEFS})
TOOL_NAMES: tuple[str, ...] = tuple(TOOLS)


def model_tool_definitions(enabled: Iterable[str]) -> list[dict[str, Any]]:
    """Messages API tool dicts for the enabled agent-toolset tools, in the toolset's canonical order."""
    wanted = set(enabled)
    unknown = wanted - TOOLS.keys()
    if unknown:
        raise ValueError(f"not agent-toolset tools: {sorted(unknown)}")
    return [d.tool_definition() for d in _DEFS if d.name in wanted]


def validate_input(name: str, input: Any) -> str | None:
    """An error message for the model when `input` does not fit tool `name`'s schema, else None."""
    tool = TOOLS.get(name)
    if tool is None:
        return f"unknown tool: {name}"
    if not isinstance(input, dict):
        return f"{name}: input must be an object"
    try:
        tool.input_model.model_validate(input)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        return f"{name}: invalid input: " + "; ".join(problems)
    return None


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """pydantic's JSON schema, tidied for a model: no titles, `X | None` as plain optional `X`."""
    schema = model.model_json_schema()
    props = {}
    for key, prop in schema.get("properties", {}).items():
        prop = {k: v for k, v in prop.items() if k not in ("title", "default")}
        options = prop.pop("anyOf", None)
        if options:
            prop.update(next(o for o in options if o.get("type") != "null"))
        props[key] = prop
    out: dict[str, Any] = {"type": "object", "properties": props}
    if schema.get("required"):
        out["required"] = schema["required"]
    out["additionalProperties"] = False
    return out
