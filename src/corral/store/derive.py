"""Session state derived from its events: status, stop reason, usage, active time, pending work.

`apply` is a pure fold step, run inside the append transaction for each new event, so the session
row can always be rebuilt by folding the log from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUS_OF", "WAKING_TYPES", "SessionState", "apply"]

STATUS_OF = {
    "session.status_running": "running",
    "session.status_idle": "idle",
    "session.status_rescheduled": "rescheduling",
    "session.status_terminated": "terminated",
}

# Client events that give a worker something to do.
WAKING_TYPES = frozenset(
    {
        "user.message",
        "user.interrupt",
        "user.tool_confirmation",
        "user.custom_tool_result",
        "user.tool_result",
        "user.define_outcome",
    }
)

_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens")


@dataclass
class SessionState:
    status: str
    needs_work: bool
    usage: dict[str, Any]
    running_since: int | None = None
    active_micros: int = 0
    stop_reason: dict[str, Any] | None = field(default=None)

    @classmethod
    def load(cls, status: str, needs_work: bool, usage_json: dict[str, Any]) -> SessionState:
        return cls(
            status=status,
            needs_work=needs_work,
            usage=usage_json["usage"],
            running_since=usage_json.get("running_since"),
            active_micros=usage_json.get("active_micros", 0),
            stop_reason=usage_json.get("stop_reason"),
        )

    def usage_json(self) -> dict[str, Any]:
        return {
            "usage": self.usage,
            "running_since": self.running_since,
            "active_micros": self.active_micros,
            "stop_reason": self.stop_reason,
        }


def apply(state: SessionState, event: dict[str, Any], now: int) -> None:
    """Fold one event (its wire dict) into the session's derived state."""
    kind = event["type"]
    if kind in WAKING_TYPES:
        state.needs_work = True
    new_status = STATUS_OF.get(kind)
    if new_status is not None:
        if new_status == "running" and state.running_since is None:
            state.running_since = now
        elif new_status != "running" and new_status != "rescheduling" and state.running_since is not None:
            state.active_micros += max(0, now - state.running_since)
            state.running_since = None
        state.status = new_status
        state.stop_reason = event.get("stop_reason") if kind == "session.status_idle" else None
        state.usage["active_seconds"] = round(state.active_micros / 1_000_000, 3)
    if kind == "span.model_request_end":
        model_usage = event.get("model_usage") or {}
        for key in _USAGE_KEYS:
            state.usage[key] = state.usage.get(key, 0) + int(model_usage.get(key, 0))
        cache = state.usage.setdefault(
            "cache_creation", {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
        )
        cache["ephemeral_5m_input_tokens"] += int(model_usage.get("cache_creation_input_tokens", 0))
