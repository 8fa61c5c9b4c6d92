"""The fold: a session's log (plus harness records) → the model's context and what is still open.

Everything the harness decides comes from this fold, so any worker that reads the log reaches the
same decision; nothing about a session lives in a worker's memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Conversation", "Fold", "ToolUse", "fold", "input_key", "run_key"]

CLIENT_INPUT = frozenset({"user.message", "system.message", "user.interrupt", "user.tool_confirmation"})
INTERRUPTED = "The user interrupted this tool call before it finished."
SUPERSEDED = "No result: the user sent a new message instead of answering this tool call."


@dataclass
class ToolUse:
    """One tool call of the latest model response."""

    event_id: str
    toolu_id: str
    name: str
    input: dict[str, Any]
    kind: str  # agent | custom | mcp
    permission: str  # allow | ask | deny
    resolved: bool = False
    confirmed: str | None = None  # allow | deny, from user.tool_confirmation
    started: bool = False  # a tool_run record exists: it began in some worker
    mcp_server: str | None = None  # an MCP call: the server's name and the tool's name on it
    mcp_tool: str | None = None

    @property
    def runnable(self) -> bool:
        """The server should run it now."""
        if self.resolved or self.kind == "custom":
            return False
        return self.permission == "allow" or self.confirmed == "allow"

    @property
    def waiting_on_client(self) -> bool:
        if self.resolved:
            return False
        return self.kind == "custom" or (self.permission == "ask" and self.confirmed is None)


@dataclass
class Conversation:
    messages: list[dict[str, Any]] = field(default_factory=list)
    user_blocks: list[dict[str, Any]] = field(default_factory=list)
    """User content after the last assistant message (tool results first): the next call's input."""
    pending: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """Queued client events not yet folded into the context, in log order."""
    tool_uses: dict[str, ToolUse] = field(default_factory=dict)
    open_span: str | None = None
    status: str = "idle"
    last_idle: dict[str, Any] | None = None
    last_stop_reason: str | None = None
    """stop_reason of the latest model response."""
    last_usage: dict[str, Any] | None = None
    failures: int = 0
    """Consecutive failed model calls (retrying errors) since the last good one."""
    turn_model_calls: int = 0
    turn_tool_calls: int = 0
    compactions: int = 0
    turn_closed: bool = False
    """The turn ended without the model (error, budget, interrupt): wait for new input."""

    def needs_model_call(self) -> bool:
        if self.turn_closed or not self.user_blocks:
            return False
        return not any(not t.resolved for t in self.tool_uses.values())

    def context(self) -> list[dict[str, Any]]:
        """Messages for the next model call (the pending user content as the last user turn)."""
        messages = list(self.messages)
        if self.user_blocks:
            _push_user(messages, self.user_blocks)
        return messages


def _push_user(messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    ordered = [b for b in blocks if b["type"] == "tool_result"] + [b for b in blocks if b["type"] != "tool_result"]
    if messages and messages[-1]["role"] == "user":
        messages[-1] = {"role": "user", "content": [*messages[-1]["content"], *ordered]}
    else:
        messages.append({"role": "user", "content": ordered})


def _user_content(event: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = []
    for block in event.get("content") or []:
        if block["type"] == "text":
            if block["text"]:
                blocks.append({"type": "text", "text": block["text"]})
        elif block["type"] in ("image", "document"):
            blocks.append(block)
    return blocks


def _result_block(tool: ToolUse, content: list[dict[str, Any]] | None, is_error: bool) -> dict[str, Any]:
    parts = []
    for block in content or []:
        if block["type"] == "text":
            parts.append({"type": "text", "text": block["text"] or "(empty)"})
        elif block["type"] in ("image", "document", "search_result"):
            parts.append(block)
    if not parts:
        parts = [{"type": "text", "text": "(no output)"}]
    return {"type": "tool_result", "tool_use_id": tool.toolu_id, "content": parts, "is_error": bool(is_error)}


class _Folder:
    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records
        self.c = Conversation()

    def resolve(self, event_id: str, content: list[dict[str, Any]] | None, is_error: bool) -> None:
        tool = self.c.tool_uses.get(event_id)
        if tool is None or tool.resolved:
            return
        tool.resolved = True
        self.c.user_blocks.append(_result_block(tool, content, is_error))

    def resolve_all(self, text: str, *, only_waiting: bool = False) -> None:
        for tool in self.c.tool_uses.values():
            if not tool.resolved and (tool.waiting_on_client or not only_waiting):
                self.resolve(tool.event_id, [{"type": "text", "text": text}], True)

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev["type"]
        c = self.c
        if kind in CLIENT_INPUT and ev.get("processed_at") is None:
            return  # queued: handled by the caller as pending input
        if kind == "user.message":
            self.resolve_all(SUPERSEDED, only_waiting=True)
            c.user_blocks.extend(_user_content(ev))
            c.turn_closed = False
            c.turn_model_calls = c.turn_tool_calls = 0
        elif kind == "system.message":
            text = "\n".join(b["text"] for b in ev["content"] if b.get("text"))
            c.user_blocks.append({"type": "text", "text": f"<system>\n{text}\n</system>"})
        elif kind == "user.interrupt":
            self.resolve_all(INTERRUPTED)
            c.turn_closed = True
        elif kind == "user.tool_confirmation":
            tool = c.tool_uses.get(ev["tool_use_id"])
            if tool is not None:
                tool.confirmed = ev["result"]
                c.turn_closed = False
                if ev["result"] == "deny":
                    message = ev.get("deny_message") or "The user denied this tool call."
                    self.resolve(tool.event_id, [{"type": "text", "text": f"Denied by the user: {message}"}], True)
        elif kind == "user.custom_tool_result":
            self.resolve(ev["custom_tool_use_id"], ev.get("content"), bool(ev.get("is_error")))
            c.turn_closed = False
        elif kind == "user.tool_result" or kind == "agent.tool_result":
            self.resolve(ev["tool_use_id"], ev.get("content"), bool(ev.get("is_error")))
        elif kind == "agent.mcp_tool_result":
            self.resolve(ev["mcp_tool_use_id"], ev.get("content"), bool(ev.get("is_error")))
        elif kind == "span.model_request_start":
            c.open_span = ev["id"]
        elif kind == "span.model_request_end":
            self.span_end(ev)
        elif kind == "session.error":
            error = ev["error"]
            if str(error.get("type")).startswith(("mcp_", "repository_")):
                pass  # an MCP server or a repository failed: the model calls are not affected
            elif error.get("retry_status", {}).get("type") != "retrying":
                c.failures = 0
            elif str(error.get("type")).startswith("model_"):
                c.failures += 1  # consecutive failed model calls; a tool's provisioning error is not one
        elif kind == "agent.thread_context_compacted":
            self.compacted(ev)
        elif kind.startswith("session.status_"):
            c.status = kind.removeprefix("session.status_").replace("rescheduled", "rescheduling")
            c.last_idle = ev if kind == "session.status_idle" else None
            if kind == "session.status_idle" and ev["stop_reason"]["type"] != "requires_action":
                c.turn_closed = True

    def span_end(self, ev: dict[str, Any]) -> None:
        c = self.c
        c.open_span = None
        record = self.records.get(ev["model_request_start_id"])
        if ev.get("is_error") or record is None:
            return
        c.failures = 0
        c.turn_model_calls += 1
        c.last_stop_reason = record.get("stop_reason")
        c.last_usage = ev.get("model_usage")
        if record["content"]:
            if c.user_blocks:
                _push_user(c.messages, c.user_blocks)
                c.user_blocks = []
            c.messages.append({"role": "assistant", "content": record["content"]})
        c.tool_uses = {}
        for tool in record.get("tools", []):
            use = ToolUse(**{k: v for k, v in tool.items() if k in _TOOL_FIELDS})
            use.started = run_key(use.event_id) in self.records
            c.tool_uses[use.event_id] = use
            c.turn_tool_calls += 1
            if use.permission == "deny":
                reason = tool.get("deny_reason") or "Tool call refused."
                self.resolve(use.event_id, [{"type": "text", "text": reason}], True)

    def compacted(self, ev: dict[str, Any]) -> None:
        c = self.c
        record = self.records.get(ev["id"])
        if record is None:
            return
        c.compactions += 1
        c.last_usage = None  # the next call measures the compacted context afresh
        last_assistant = max((i for i, m in enumerate(c.messages) if m["role"] == "assistant"), default=None)
        kept = c.messages[last_assistant:] if last_assistant is not None else []
        summary = {"role": "user", "content": [{"type": "text", "text": record["summary"]}]}
        c.messages = [summary, *kept]


_TOOL_FIELDS = ("event_id", "toolu_id", "name", "input", "kind", "permission", "mcp_server", "mcp_tool")


def run_key(tool_use_id: str) -> str:
    """Record key marking that a tool call began (written before it runs)."""
    return "run:" + tool_use_id


def input_key(event_id: str) -> str:
    """Record key saying where in the log a queued client event was taken in."""
    return "in:" + event_id


class Fold:
    """A fold that can be carried forward: the state after the events up to `last`, extended one
    appended event at a time. A worker folds a session's log once per run and then only what it
    appends; the result is the same as folding the whole log again (`fold`), which tests check.

    A queued client event counts from the point where the harness took it in (its `in:` record), not
    from where it was queued: a message sent mid-turn joins the context after the work that was already
    under way, as it did when the harness read it. Such an event waits in `_taken_in` until the event it
    was taken in after is folded."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self._folder = _Folder(records)
        self._taken_in: dict[int, list[dict[str, Any]]] = {}
        self.last = 0
        """Sequence number of the last event folded."""

    def add(self, seq: int, ev: dict[str, Any]) -> None:
        self.last = max(self.last, seq)
        if not self._held_back(seq, ev):
            self._folder.event(ev)
        for deferred in self._taken_in.pop(seq, []):  # input taken in right after this event
            self._folder.event(deferred)

    def _held_back(self, seq: int, ev: dict[str, Any]) -> bool:
        """Client input that does not count here: queued, dropped, or taken in after a later event."""
        if ev["type"] not in CLIENT_INPUT:
            return False
        if ev.get("processed_at") is None:
            self._folder.c.pending.append((seq, ev))
            return True
        record = self._folder.records.get(input_key(ev["id"]))
        if record is not None and record.get("flushed"):
            return True  # dropped with a dead turn: never shown to the model
        if record is not None and record["after_seq"] > seq:
            self._taken_in.setdefault(record["after_seq"], []).append(ev)
            return True
        return False

    def record(self, key: str, body: dict[str, Any]) -> None:
        """A harness record appended after the events folded so far. Only `run:` records change what
        is already folded (the tool call began); the rest are read when their event comes."""
        self._folder.records[key] = body
        if key.startswith("run:"):
            tool = self._folder.c.tool_uses.get(key.removeprefix("run:"))
            if tool is not None:
                tool.started = True

    def take_in(self, taken: list[tuple[int, dict[str, Any]]]) -> bool:
        """Queued input taken in right after the last event folded (`in:` records with that `after_seq`,
        already recorded; the events as marked processed): fold it now, where a fold of the whole log
        places it: the last event first if it is one of them, then the rest in log order. False, and
        nothing changed, when they were taken in anywhere else."""
        records = self._folder.records
        for seq, ev in taken:
            record = records.get(input_key(ev["id"]))
            if record is None or record["after_seq"] != self.last or seq > self.last:
                return False
        seqs = {seq for seq, _ in taken}
        c = self._folder.c
        c.pending = [(seq, ev) for seq, ev in c.pending if seq not in seqs]
        for _, ev in sorted(taken, key=lambda item: (item[0] != self.last, item[0])):
            if not records[input_key(ev["id"])].get("flushed"):
                self._folder.event(ev)
        return True

    @property
    def carried(self) -> bool:
        """False when an input was taken in after an event not folded yet: then only a fold of the
        whole log places it right (`result` folds it at the end, as `fold` does)."""
        return not self._taken_in

    def result(self) -> Conversation:
        if self.carried:
            return self._folder.c
        done = self.clone()
        for seq in sorted(done._taken_in):
            for deferred in done._taken_in[seq]:
                done._folder.event(deferred)
        return done._folder.c

    def clone(self) -> Fold:
        """A copy to fold further without touching this one (lists copied; their items are never changed in place)."""
        c = self._folder.c
        copy = Fold(dict(self._folder.records))
        copy._folder.c = dataclasses.replace(
            c,
            messages=list(c.messages),
            user_blocks=list(c.user_blocks),
            pending=list(c.pending),
            tool_uses={k: dataclasses.replace(t) for k, t in c.tool_uses.items()},
        )
        copy._taken_in = {k: list(v) for k, v in self._taken_in.items()}
        copy.last = self.last
        return copy


def fold(events: list[tuple[int, dict[str, Any]]], records: dict[str, dict[str, Any]]) -> Conversation:
    """Fold the whole log (see `Fold`)."""
    state = Fold(dict(records))
    for seq, ev in events:
        state.add(seq, ev)
    return state.result()
