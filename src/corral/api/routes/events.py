"""`/v1/sessions/{id}/events`: send, list (filters, order, pages) and the live SSE stream."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from ...errors import InvalidRequest
from ...schemas.events import EVENT_TYPES, ClientEventParams
from ...service.sessions import send_events
from ...store.pages import Cursor
from ...store.store import Store
from ..deps import get_runtime, get_store
from ..query import parse_limit, parse_time_ranges, query_list
from ..sse import SessionStream

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["events"])

PREVIEWABLE = ("agent.message", "agent.thinking")


class SendEvents(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[ClientEventParams] = Field(min_length=1, max_length=100)


@router.post("/events")
async def send(session_id: str, body: SendEvents, store: Store = Depends(get_store)) -> dict[str, Any]:
    persisted = await send_events(store, session_id, list(body.events))
    return {"data": [e.model_dump(mode="json") for e in persisted]}


@router.get("/events")
async def list_events(
    session_id: str,
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    order: Literal["asc", "desc"] = "asc",
    store: Store = Depends(get_store),
) -> Response:
    types = query_list(request, "types")
    if bad := [t for t in types if t not in EVENT_TYPES]:
        raise InvalidRequest(f"unknown event type {bad[0]!r}")
    size = parse_limit(limit, 1000, 1000)
    # The cursor's `created_at` slot carries the log position of the last event on the page.
    after = Cursor.decode(page, order).created_at if page else 0
    await store.events.head(session_id)  # 404 for an unknown session
    events = await store.events.read(
        session_id,
        after=after,
        limit=size + 1,
        order=order,
        types=types or None,
        processed=parse_time_ranges(request),
    )
    more = len(events) > size
    events = events[:size]
    next_page = Cursor(events[-1].seq, session_id, order).encode() if more else None
    body = '{"data":[' + ",".join(e.json for e in events) + '],"next_page":' + json.dumps(next_page) + "}"
    return Response(body, media_type="application/json")


@router.get("/events/stream")
async def stream(session_id: str, request: Request) -> StreamingResponse:
    deltas = set(query_list(request, "event_deltas"))
    if bad := deltas - set(PREVIEWABLE):
        raise InvalidRequest(f"event_deltas accepts only {', '.join(PREVIEWABLE)}; got {sorted(bad)[0]!r}")
    runtime = get_runtime(request)
    session_stream = SessionStream(runtime.store, session_id, runtime.settings.sse_ping_seconds, deltas)
    await session_stream.open()
    return StreamingResponse(
        session_stream.frames(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        background=BackgroundTask(session_stream.close),
    )
