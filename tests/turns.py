"""Helpers to drive sessions the way a client does: open the stream, send, read until the session idles."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anthropic


def text(message: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": message}]}


def turn(
    client: anthropic.Anthropic,
    session_id: str,
    events: list[dict[str, Any]],
    *,
    deltas: list[str] | None = None,
    timeout: float = 20.0,
) -> list[Any]:
    """Send `events` and return everything the stream shows until the session idles or terminates."""
    seen: list[Any] = []
    kwargs: dict[str, Any] = {"event_deltas": deltas} if deltas else {}
    with client.beta.sessions.events.stream(session_id, timeout=timeout, **kwargs) as stream:
        if events:
            client.beta.sessions.events.send(session_id, events=events)
        for event in stream:
            seen.append(event)
            if event.type in ("session.status_idle", "session.status_terminated"):
                break
    return seen


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def new_session(client: anthropic.Anthropic, **agent: Any) -> Any:
    spec = {"name": "harness test", "model": "claude-sonnet-4-6", **agent}
    created = client.beta.agents.create(**spec)
    env = client.beta.environments.create(name=f"env-{uuid.uuid4().hex[:10]}")
    return client.beta.sessions.create(agent=created.id, environment_id=env.id)
