"""Shared wire pieces: timestamps, metadata rules, permission policies, base model classes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "AllowPolicy",
    "AskPolicy",
    "AutoPolicy",
    "Metadata",
    "MetadataPatch",
    "Policy",
    "Request",
    "Response",
    "Timestamp",
    "format_timestamp",
    "from_micros",
    "now_micros",
    "to_micros",
    "validate_metadata",
]


def now_micros() -> int:
    """Now, as integer microseconds since the epoch: the store's one time format (both dialects).

    Stored times are whole milliseconds, the precision the API writes, so a filter built from a
    timestamp a client read back compares equal to the stored value."""
    return to_micros(datetime.now(UTC))


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC)


def to_micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    whole = int(value.replace(microsecond=0).timestamp())
    return whole * 1_000_000 + (value.microsecond // 1000) * 1000


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`, as the API writes them."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]


class Request(BaseModel):
    """Base of request bodies: unknown fields are an error, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    """Base of response objects: every declared field is always emitted (null when unset)."""

    model_config = ConfigDict(extra="forbid")


class AllowPolicy(Response):
    type: Literal["always_allow"] = "always_allow"


class AskPolicy(Response):
    type: Literal["always_ask"] = "always_ask"


class AutoPolicy(Response):
    type: Literal["auto"] = "auto"


Policy = Annotated[AllowPolicy | AskPolicy | AutoPolicy, Field(discriminator="type")]

Metadata = dict[str, str]
MetadataPatch = dict[str, str | None]

MAX_METADATA_PAIRS = 16


def validate_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The API's metadata limits: at most 16 pairs, keys 1-64 chars, values at most 512 chars."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ValueError(f"metadata may hold at most {MAX_METADATA_PAIRS} pairs, got {len(metadata)}")
    for key, value in metadata.items():
        if not 1 <= len(key) <= 64:
            raise ValueError(f"metadata key {key[:70]!r} must be 1 to 64 characters")
        if value is not None and len(value) > 512:
            raise ValueError(f"metadata value for {key!r} is longer than 512 characters")
    return metadata


def apply_metadata_patch(
    current: dict[str, str], patch: dict[str, str | None], *, empty_deletes: bool = False
) -> dict[str, str]:
    """Upsert string values, delete keys set to null (and to "" where the resource says so)."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None or (empty_deletes and value == ""):
            merged.pop(key, None)
        else:
            merged[key] = value
    validate_metadata(merged)
    return merged
