"""Checks that a response body is exactly what the SDK's pydantic model describes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def assert_exact(model: type[BaseModel], raw: Any) -> BaseModel:
    """Parse `raw` with the SDK `model` and fail on any extra or missing field, at every depth."""
    parsed = model.model_validate(raw)
    problems: list[str] = []
    _walk(parsed, "$", problems)
    assert not problems, f"{model.__name__}: " + "; ".join(problems)
    return parsed


def _walk(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, BaseModel):
        extra = node.model_extra or {}
        if extra:
            problems.append(f"{path} has extra fields {sorted(extra)}")
        missing = set(type(node).model_fields) - node.model_fields_set
        if missing:
            problems.append(f"{path} lacks fields {sorted(missing)}")
        for name in type(node).model_fields:
            _walk(getattr(node, name), f"{path}.{name}", problems)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", problems)
    elif isinstance(node, dict):
        for key, value in node.items():
            _walk(value, f"{path}.{key}", problems)
