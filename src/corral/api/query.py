"""Query-string conventions of the API: `name[]=a&name[]=b` arrays and `created_at[gte]` ranges."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Request

from ..errors import InvalidRequest

__all__ = ["parse_bool", "parse_limit", "parse_time_ranges", "query_list"]

RANGE_OPS = ("gt", "gte", "lt", "lte")


def query_list(request: Request, name: str) -> list[str]:
    """Values of an array parameter, sent as `name[]=` (the SDK) or repeated `name=`."""
    return request.query_params.getlist(f"{name}[]") + request.query_params.getlist(name)


def _parse_time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an RFC 3339 timestamp, got {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_time_ranges(
    request: Request, name: str = "created_at", ops: tuple[str, ...] = RANGE_OPS
) -> dict[str, datetime | None]:
    ranges: dict[str, datetime | None] = {}
    for op in ops:
        raw = request.query_params.get(f"{name}[{op}]")
        ranges[op] = _parse_time(raw, f"{name}[{op}]") if raw else None
    return ranges


def parse_limit(value: int | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not 1 <= value <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}, got {value}")
    return value


def parse_bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidRequest(f"{name} must be true or false")
