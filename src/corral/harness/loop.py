"""The harness: a stateless loop that advances one session from its log until it needs input.

Each pass folds the log, takes the one next action the log calls for, and appends what happened
(in a transaction fenced by the worker's lease), then folds again. Because every decision comes
from the log, a worker that dies at any point is replaced by one that reads the same log and
continues: a model call without its end span is closed as failed and issued again; a tool call
that began but has no result is answered with an error saying so, never run a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..ids import new_id
from ..models.base import BlockStart, ModelClient, ModelError, ModelRequest, ModelResponse, TextDelta
from ..pricing import price_for
from ..schemas.events import (
    AgentCustomToolUse,
    AgentMCPToolResult,
    AgentMCPToolUse,
    AgentMessage,
    AgentThinking,
    AgentToolResult,
    AgentToolUse,
    Event,
    SessionError,
    SessionStatusIdle,
    SessionStatusRescheduled,
    SessionStatusRunning,
    SpanModelRequestEnd,
    SpanModelRequestStart,
    SpanModelUsage,
    error_object,
)
from ..schemas.sessions import Session
from ..store.events import Record
from ..store.store import Store
from . import crashpoints
from .compaction import Compactor
from .context import Conversation, ToolUse, input_key, run_key
from .interrupts import Interrupted, InterruptWatcher
from .mcp import MCPOffer, MCPToolsets
from .policies import decide, enabled_agent_tools, model_tools
from .runlog import RunLog
from .tools import ToolRunner

__all__ = ["Harness", "Interrupted"]

log = logging.getLogger("corral.harness")

_ERROR_KINDS = {
    "overloaded": "model_overloaded_error",
    "rate_limited": "model_rate_limited_error",
    "request_failed": "model_request_failed_error",
    "billing": "billing_error",
    "invalid_request": "model_request_failed_error",
}
WORKER_STOPPED = "This tool call was interrupted: the worker running it stopped before it finished. It was not re-run."


@dataclass(frozen=True)
class _ResponseIds:
    """Ids of the buffered events a model response will produce, known before it streams (for previews)."""

    thinking: str
    message: str


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Pass:
    """What one pass of the loop works with."""

    session: Session
    convo: Conversation
    head: int
    log: RunLog
    watcher: InterruptWatcher


class Harness:
    def __init__(
        self,
        store: Store,
        model: ModelClient,
        tools: ToolRunner,
        settings: Settings,
        mcp: MCPToolsets | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.tools = tools
        self.mcp = mcp
        self.settings = settings
        self.compactor = Compactor(model, settings)

    # ---- the loop --------------------------------------------------------------------------------

    async def run(self, session_id: str, owner: str) -> None:
        """Advance the session until it waits for input. Call only while holding its lease."""
        # The first pass tells the watcher where the log stands (`watcher.seen`).
        with self.store.hub.follow(session_id, 0) as channel:
            watcher = InterruptWatcher(self.store, session_id, channel, 0)
            runlog = RunLog(self.store, session_id, owner)
            try:
                while await self._step(runlog, watcher):
                    pass
            finally:
                with contextlib.suppress(Exception):  # the run failed: what it failed on is already raised
                    await runlog.settle()
                watcher.close()
                if self.mcp is not None:
                    self.mcp.forget(session_id)

    async def _load(self, runlog: RunLog, watcher: InterruptWatcher) -> _Pass:
        session = await runlog.refresh(watcher.channel.head)  # the row and the log agree
        return _Pass(session, runlog.fold(), runlog.head, runlog, watcher)

    async def _step(self, runlog: RunLog, watcher: InterruptWatcher) -> bool:
        """Take one action; False when the session is waiting (or cannot go on)."""
        p = await self._load(runlog, watcher)
        convo, session = p.convo, p.session
        watcher.seen(p.head)
        chained, runlog.chained_span = runlog.chained_span, None
        if session.status == "terminated" or session.archived_at is not None:
            await self._append(p, [], needs_work=False, head=p.head)
            return False
        interrupts = [(s, e) for s, e in convo.pending if e["type"] == "user.interrupt"]
        if convo.open_span and convo.open_span == chained and not interrupts:
            return await self._model_call(p, chained)  # started with the previous step's append
        if convo.open_span:  # a model call that never finished (crash or interrupt)
            await self._append(p, [_span_end(convo.open_span, None, error=True)])
            return True
        if interrupts:  # interrupts jump the queue: take in everything up to the last one
            last = interrupts[-1][0]
            await self._take_in(p, [(s, e) for s, e in convo.pending if s <= last])
            return True
        runnable = [t for t in convo.tool_uses.values() if t.runnable]
        if runnable:
            await self._run_tool(p, runnable[0])
            return True
        if convo.pending:
            await self._take_in(p, convo.pending)
            return True
        if convo.needs_model_call():
            return await self._before_model_call(p)
        # nothing left to do until the client acts: the turn is over
        idle = _turn_over(convo)
        await self._append(p, [idle] if idle else [], needs_work=False, head=p.head)
        return False

    # ---- input --------------------------------------------------------------------------------

    async def _take_in(self, p: _Pass, pending: list[tuple[int, dict[str, Any]]]) -> None:
        """Mark queued client events processed, recording where in the log they were taken in."""
        interrupted = any(e["type"] == "user.interrupt" for _, e in pending)
        starts_work = any(e["type"] in ("user.message", "user.tool_confirmation") for _, e in pending)
        events: list[Event] = []
        if starts_work and p.convo.status != "running":
            events.append(SessionStatusRunning(id=new_id("event"), processed_at=_now()))
            if any(name in self.tools.definitions for name in enabled_agent_tools(p.session.agent)):
                await self.tools.prepare(p.session)  # returns at once (CORRAL_SANDBOX_PROVISION=eager)
        elif interrupted and not starts_work:
            last_stop = (p.convo.last_idle or {}).get("stop_reason", {}).get("type")
            if p.convo.status != "idle" or last_stop == "requires_action":
                events.append(_idle({"type": "end_turn"}))
        records: list[Record] = [(input_key(e["id"]), "input", {"after_seq": p.head}) for _, e in pending]
        processed = [s for s, _ in pending]
        if starts_work:  # the turn's first model call can open with it (its first agent events arrive together)
            events = self._chain(p, events, records, processed)
        await self._append_step(p, events, records, None, processed)

    # ---- tools --------------------------------------------------------------------------------

    async def _run_tool(self, p: _Pass, tool: ToolUse) -> None:
        session_id = p.session.id
        if tool.started:  # it began under a worker that is gone: never run it twice
            await self._append(p, [_tool_result(tool, WORKER_STOPPED, error=True)])
            return
        if p.convo.turn_tool_calls > self.settings.max_tool_calls_per_turn:
            await self._limit_reached(p, "tool calls")
            return
        events: list[Event] = []
        if p.convo.status != "running":
            events.append(SessionStatusRunning(id=new_id("event"), processed_at=_now()))
        await p.log.append(events, records=[(run_key(tool.event_id), "tool_run", {"owner": p.log.owner})])
        await crashpoints.reach("after_tool_start")
        errors: list[Event] = []
        try:
            if tool.kind == "mcp" and self.mcp is not None:
                call = self.mcp.call(p.session, tool.mcp_server or "", tool.mcp_tool or "", tool.input)
                result, errors = await p.watcher.guard(call)
            else:
                run = self.tools.run(p.session, tool.name, tool.input)
                result = await p.watcher.guard(run, lambda: self.tools.interrupt(session_id))
        except Interrupted:
            await self._append(p, [_tool_result(tool, "Interrupted by the user.", error=True)])
            return
        except Exception as exc:  # a broken tool must not wedge the session
            log.exception("tool %s failed in session %s", tool.name, session_id)
            await self._append(p, [_tool_result(tool, f"Tool error: {exc}", error=True)])
            return
        errors += [SessionError(id=new_id("event"), processed_at=_now(), error=error) for error in result.errors]
        done = [*errors, _result_event(tool, result.content, result.is_error)]
        await self._append_step(p, self._chain(p, done), (), "after_tool_result")

    # ---- model --------------------------------------------------------------------------------

    async def _before_model_call(self, p: _Pass) -> bool:
        session, convo = p.session, p.convo
        if convo.turn_model_calls >= self.settings.max_model_calls_per_turn:
            await self._limit_reached(p, "model calls")
            return False
        if session.budget is not None:
            priced = price_for(session.agent.model.id, self.settings.model_prices) is not None
            if not priced or int(session.usage.list_cost.amount) >= int(session.budget.max_list_cost.amount):
                await self._append(p, [_idle({"type": "budget_reached"})], needs_work=False, head=p.head)
                return False
        if self.compactor.due(convo):
            if convo.compactions >= self.settings.max_compactions:
                error = error_object(
                    "compaction_limit_reached_error", "The context cannot be compacted again.", "exhausted"
                )
                await self._append(
                    p, [SessionError(id=new_id("event"), processed_at=_now(), error=error), _idle(_EXHAUSTED)]
                )
                return True
            await self._compact(p)
            return True
        return await self._model_call(p, None)

    def _chain(
        self, p: _Pass, events: list[Event], records: Sequence[Record] = (), processed: Sequence[int] = ()
    ) -> list[Event]:
        """`events`, plus the next model call's span start when that call is sure to be the next step.

        Writing both in one append saves a commit and a pass per model step. Only when nothing else
        can come first: no input known to have arrived (the hub's head is ours), no budget to check
        against usage the append is about to change, no limit reached, no compaction due. A worker
        that dies after this append leaves an open span, closed as failed and re-issued like any other."""
        if p.session.budget is not None or p.watcher.channel.head > p.log.head:
            return events
        state = p.log.ahead(events, records, processed)
        after = state.result()
        if after.open_span or after.pending or not after.needs_model_call():
            return events
        if after.turn_model_calls >= self.settings.max_model_calls_per_turn or self.compactor.due(after):
            return events
        start = SpanModelRequestStart(id=new_id("event"), processed_at=_now())
        p.log.chained_span = start.id
        state.add(state.last + 1, {"type": start.type, "id": start.id})  # all that folding a span start reads
        p.log.expect(state, len(events) + 1)
        return [*events, start]

    async def _append_step(
        self,
        p: _Pass,
        events: list[Event],
        records: Sequence[Record],
        crashpoint: str | None,
        processed: Sequence[int] = (),
    ) -> None:
        """Append what a step produced. When it ends with the next model call's span start (`_chain`), that
        call is sent while the append commits (`RunLog.append_behind`): a step costs the commit's latency
        only where the two do not overlap. The call looks at nothing the model sends before the append
        has landed, so streams see the step's events before any preview of the next call."""
        chained = p.log.chained_span is not None and bool(events) and events[-1].id == p.log.chained_span

        async def reached() -> None:
            if crashpoint is not None:
                await crashpoints.reach(crashpoint)
            if chained:
                await crashpoints.reach("after_model_start")

        if chained:
            p.log.append_behind(events, records, processed, reached)
            return
        await p.log.append(events, records=records, processed=processed)
        await reached()

    def _ends_turn(self, p: _Pass, events: list[Event], records: Sequence[Record]) -> SessionStatusIdle | None:
        """The idle event that ends the turn once `events` are appended, when nothing can come first: no
        input known to have arrived, no tool call to run, no model call due (`_step` would end the turn
        the same way on its next pass, a commit later)."""
        if p.watcher.channel.head > p.log.head:
            return None
        after = p.log.ahead(events, records).result()
        if after.open_span or after.pending or after.needs_model_call():
            return None
        if any(t.runnable for t in after.tool_uses.values()):
            return None
        return _turn_over(after)

    def _request(self, session: Session, convo: Conversation, offer: MCPOffer) -> ModelRequest:
        agent = session.agent
        return ModelRequest(
            model=agent.model.id,
            system=agent.system,
            messages=convo.context(),
            tools=model_tools(agent, self.tools.definitions, offer.definitions),
            max_tokens=self.settings.max_output_tokens,
        )

    async def _model_call(self, p: _Pass, start_id: str | None) -> bool:
        """Call the model under the span `start_id` (already appended), or under a new one. False when
        the turn ended with the model's answer."""
        session_id = p.session.id
        if start_id is None:
            start_id = (await self._start_span(p)).id
            await crashpoints.reach("after_model_start")  # a chained start reaches it as it lands
        ids = _ResponseIds(thinking=new_id("event"), message=new_id("event"))
        try:
            offer = MCPOffer() if self.mcp is None else await p.watcher.guard(self.mcp.offer(p.session))
            if offer.errors:  # a server failed to list: the model goes on without its tools
                await self._append(p, list(offer.errors))
            request = self._request(p.session, p.convo, offer)
            response = await p.watcher.guard(self._stream(session_id, request, ids, p.log.settle))
        except Interrupted:
            await self._append(p, [_span_end(start_id, None, error=True)])
            return True
        except ModelError as exc:
            await self._model_failed(p, start_id, exc)
            return True
        await crashpoints.reach("before_model_end")
        return await self._model_done(p, start_id, ids, response, offer)

    async def _start_span(self, p: _Pass) -> SpanModelRequestStart:
        first: list[Event] = []
        if p.convo.status != "running":
            first.append(SessionStatusRunning(id=new_id("event"), processed_at=_now()))
        start = SpanModelRequestStart(id=new_id("event"), processed_at=_now())
        await self._append(p, [*first, start])
        return start

    async def _stream(
        self, session_id: str, request: ModelRequest, ids: _ResponseIds, settle: Callable[[], Awaitable[None]]
    ) -> ModelResponse:
        """Stream the model, previewing text as `event_delta`s of the `agent.message` to come.

        `settle` is awaited before the first thing the model sends is looked at (the step before may
        still be committing). Preview indices count non-empty text blocks, as the buffered message's
        `content` will."""
        hub = self.store.hub
        started_text = started_thinking = False
        text_index: dict[int, int] = {}
        settled = False
        async for item in self.model.stream(request):
            if not settled:
                await settle()
                settled = True
            if isinstance(item, BlockStart):
                if item.kind == "text" and not started_text:
                    started_text = True
                    hub.preview(
                        session_id,
                        "agent.message",
                        {"type": "event_start", "event": {"type": "agent.message", "id": ids.message}},
                    )
                elif item.kind in ("thinking", "redacted_thinking") and not started_thinking:
                    started_thinking = True
                    hub.preview(
                        session_id,
                        "agent.thinking",
                        {"type": "event_start", "event": {"type": "agent.thinking", "id": ids.thinking}},
                    )
            elif isinstance(item, TextDelta) and item.text:
                index = text_index.setdefault(item.index, len(text_index))
                hub.preview(
                    session_id,
                    "agent.message",
                    {
                        "type": "event_delta",
                        "event_id": ids.message,
                        "delta": {
                            "type": "content_delta",
                            "index": index,
                            "content": {"type": "text", "text": item.text},
                        },
                    },
                )
            elif isinstance(item, ModelResponse):
                return item
        raise ModelError("request_failed", "the model stream ended without a response")

    async def _model_done(
        self, p: _Pass, start_id: str, ids: _ResponseIds, response: ModelResponse, offer: MCPOffer
    ) -> bool:
        session = p.session
        now = _now()
        events: list[Event] = []
        content = response.content
        if any(b["type"] in ("thinking", "redacted_thinking") for b in content):
            events.append(AgentThinking(id=ids.thinking, processed_at=now))
        text = [{"type": "text", "text": b["text"]} for b in content if b["type"] == "text" and b.get("text")]
        if text:
            events.append(AgentMessage(id=ids.message, processed_at=now, content=text))
        tools: list[dict[str, Any]] = []
        for block in content:
            if block["type"] != "tool_use":
                continue
            decision = decide(session.agent, block["name"], block.get("input") or {}, offer.routes)
            event_id = new_id("event")
            route = decision.route
            if decision.kind == "custom":
                events.append(
                    AgentCustomToolUse(id=event_id, processed_at=now, name=block["name"], input=block["input"])
                )
            elif route is not None:
                events.append(
                    AgentMCPToolUse(
                        id=event_id,
                        processed_at=now,
                        name=route.tool,
                        mcp_server_name=route.server,
                        input=block.get("input") or {},
                        evaluated_permission=decision.permission,
                        evaluation=decision.evaluation,
                    )
                )
            else:
                events.append(
                    AgentToolUse(
                        id=event_id,
                        processed_at=now,
                        name=block["name"],
                        input=block.get("input") or {},
                        evaluated_permission=decision.permission,
                        evaluation=decision.evaluation,
                    )
                )
            tools.append(
                {
                    "event_id": event_id,
                    "toolu_id": block["id"],
                    "name": block["name"],
                    "input": block.get("input") or {},
                    "kind": decision.kind,
                    "permission": decision.permission,
                    "deny_reason": decision.deny_reason,
                    **({"mcp_server": route.server, "mcp_tool": route.tool} if route else {}),
                }
            )
        events.append(_span_end(start_id, response.usage, error=False))
        records: list[Record] = [
            (start_id, "model_output", {"content": content, "stop_reason": response.stop_reason, "tools": tools})
        ]
        events = self._chain(p, events, records)
        idle = None if p.log.chained_span else self._ends_turn(p, events, records)
        if idle is not None:  # the answer ends the turn: say so in the same commit, and the run is over
            await p.log.append([*events, idle], records=records, needs_work=False, decided_at=p.log.head)
            await crashpoints.reach("after_model_end")
            return False
        await self._append_step(p, events, records, "after_model_end")
        return True

    async def _model_failed(self, p: _Pass, start_id: str, exc: ModelError) -> None:
        kind = _ERROR_KINDS[exc.kind]
        attempts = p.convo.failures + 1
        if exc.retryable and attempts <= self.settings.model_max_retries:
            await self._append(
                p,
                [
                    _span_end(start_id, None, error=True),
                    SessionError(
                        id=new_id("event"), processed_at=_now(), error=error_object(kind, exc.message, "retrying")
                    ),
                    SessionStatusRescheduled(id=new_id("event"), processed_at=_now()),
                ],
            )
            delay = exc.retry_after or self.settings.model_retry_base_seconds * 2 ** (attempts - 1)
            try:
                await p.watcher.guard(asyncio.sleep(min(delay, 60)))
            except Interrupted:
                return
            return
        # the turn is dead: queued input is flushed (processed, never shown to the model) and the session idles
        flushed = [(s, e) for s, e in p.convo.pending if e["type"] != "user.interrupt"]
        await p.log.append(
            [
                _span_end(start_id, None, error=True),
                SessionError(
                    id=new_id("event"), processed_at=_now(), error=error_object(kind, exc.message, "exhausted")
                ),
                _idle(_EXHAUSTED),
            ],
            records=[(input_key(e["id"]), "input", {"after_seq": p.head, "flushed": True}) for _, e in flushed],
            processed=[s for s, _ in flushed],
        )

    async def _limit_reached(self, p: _Pass, what: str) -> None:
        message = f"This turn reached the limit of {what} per turn."
        error = error_object("tool_use_limit_reached_error", message, "exhausted")
        await self._append(p, [SessionError(id=new_id("event"), processed_at=_now(), error=error), _idle(_EXHAUSTED)])

    async def _compact(self, p: _Pass) -> None:
        """The summary call is a model call like any other: it has its span and counts toward usage."""
        start = await self._start_span(p)
        try:
            summary, usage = await p.watcher.guard(self.compactor.summarize(p.session, p.convo))
        except Interrupted:
            await self._append(p, [_span_end(start.id, None, error=True)])
            return
        except ModelError as exc:
            await self._model_failed(p, start.id, exc)
            return
        event = self.compactor.event()
        await p.log.append(
            [_span_end(start.id, usage, error=False), event], records=[(event.id, "compaction", {"summary": summary})]
        )

    # ---- plumbing -----------------------------------------------------------------------------

    async def _append(
        self, p: _Pass, events: list[Event], needs_work: bool | None = None, head: int | None = None
    ) -> None:
        await p.log.append(events, needs_work=needs_work, decided_at=head)


_EXHAUSTED = {"type": "retries_exhausted"}


def _turn_over(convo: Conversation) -> SessionStatusIdle | None:
    """How a turn with nothing left to do ends: `requires_action` while tool calls wait on the client,
    else `end_turn` (`refusal` after a refusal); None when the session already says so."""
    waiting = [t.event_id for t in convo.tool_uses.values() if t.waiting_on_client]
    if waiting:
        stop = {"type": "requires_action", "event_ids": waiting}
        if convo.status != "idle" or (convo.last_idle or {}).get("stop_reason") != stop:
            return _idle(stop)
        return None
    if convo.status != "idle":
        return _idle({"type": "refusal"} if convo.last_stop_reason == "refusal" else {"type": "end_turn"})
    return None


def _idle(stop_reason: dict[str, Any]) -> SessionStatusIdle:
    return SessionStatusIdle(id=new_id("event"), processed_at=_now(), stop_reason=stop_reason)


def _span_end(start_id: str, usage: Any, *, error: bool) -> SpanModelRequestEnd:
    model_usage = SpanModelUsage(
        input_tokens=getattr(usage, "input_tokens", 0),
        output_tokens=getattr(usage, "output_tokens", 0),
        cache_creation_input_tokens=getattr(usage, "cache_creation_input_tokens", 0),
        cache_read_input_tokens=getattr(usage, "cache_read_input_tokens", 0),
    )
    return SpanModelRequestEnd(
        id=new_id("event"),
        processed_at=_now(),
        model_request_start_id=start_id,
        model_usage=model_usage,
        is_error=error,
    )


def _tool_result(tool: ToolUse, text: str, *, error: bool) -> Event:
    return _result_event(tool, [{"type": "text", "text": text}], error)


def _result_event(tool: ToolUse, content: list[dict[str, Any]], is_error: bool) -> Event:
    """`agent.mcp_tool_result` for an MCP call, `agent.tool_result` for the rest."""
    if tool.kind == "mcp":
        return AgentMCPToolResult(
            id=new_id("event"), processed_at=_now(), mcp_tool_use_id=tool.event_id, content=content, is_error=is_error
        )
    return AgentToolResult(
        id=new_id("event"), processed_at=_now(), tool_use_id=tool.event_id, content=content, is_error=is_error
    )
