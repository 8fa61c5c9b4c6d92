"""The agent toolset definitions handed to the model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral.schemas.tools import AGENT_TOOL_NAMES
from corral.tools.toolset import (
    TOOL_NAMES,
    TOOLS,
    BashInput,
    ReadInput,
    model_tool_definitions,
    validate_input,
)


def test_the_eight_tools_match_the_api_schema() -> None:
    assert TOOL_NAMES == AGENT_TOOL_NAMES


def test_definitions_are_messages_api_tools_in_canonical_order() -> None:
    defs = model_tool_definitions({"grep", "bash", "web_search"})
    assert [d["name"] for d in defs] == ["bash", "grep", "web_search"]
    for d in model_tool_definitions(TOOL_NAMES):
        assert set(d) == {"name", "description", "input_schema"}
        assert d["description"]
        schema = d["input_schema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        for prop in schema["properties"].values():
            assert "anyOf" not in prop and "title" not in prop and prop.get("description")
    with pytest.raises(ValueError):
        model_tool_definitions({"bash", "rm_rf"})


def test_schemas_have_the_sdk_fields() -> None:
    props = {
        d["name"]: (set(d["input_schema"]["properties"]), set(d["input_schema"].get("required", [])))
        for d in model_tool_definitions(TOOL_NAMES)
    }
    assert props == {
        "bash": ({"command", "restart", "timeout_ms"}, set()),
        "read": ({"file_path", "view_range"}, {"file_path"}),
        "write": ({"file_path", "content"}, {"file_path", "content"}),
        "edit": ({"file_path", "old_string", "new_string", "replace_all"}, {"file_path", "old_string", "new_string"}),
        "glob": ({"pattern", "path"}, {"pattern"}),
        "grep": ({"pattern", "path"}, {"pattern"}),
        "web_fetch": ({"url"}, {"url"}),
        "web_search": ({"query"}, {"query"}),
    }
    view_range = model_tool_definitions({"read"})[0]["input_schema"]["properties"]["view_range"]
    assert view_range == {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 2,
        "maxItems": 2,
        "description": view_range["description"],
    }


def test_annotations() -> None:
    flags = {name: (t.read_only, t.idempotent) for name, t in TOOLS.items()}
    assert flags["read"] == flags["glob"] == flags["grep"] == (True, True)
    assert flags["write"] == (False, True)
    assert flags["bash"] == flags["edit"] == (False, False)
    assert {n for n, t in TOOLS.items() if t.in_sandbox} == {"bash", "read", "write", "edit", "glob", "grep"}


def test_validate_input() -> None:
    assert validate_input("bash", {"command": "ls"}) is None
    assert validate_input("bash", {"restart": True}) is None
    assert validate_input("bash", {}) == "bash: invalid input: command is required unless restart is true"
    assert validate_input("read", {"file_path": "a", "view_range": [1, 2]}) is None
    assert "view_range" in (validate_input("read", {"file_path": "a", "view_range": [1]}) or "")
    assert "file_path" in (validate_input("write", {"content": "x"}) or "")
    assert "extra" in (validate_input("glob", {"pattern": "*", "extra": 1}) or "")
    assert validate_input("nope", {}) == "unknown tool: nope"
    assert validate_input("grep", "pattern") == "grep: input must be an object"
    assert validate_input("web_fetch", {"url": "https://example.com"}) is None


def test_input_models_are_frozen() -> None:
    model = ReadInput(file_path="a")
    with pytest.raises(ValidationError):
        model.file_path = "b"  # type: ignore[misc]
    assert BashInput(command="x").timeout_ms is None
