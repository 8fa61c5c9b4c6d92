"""Session events through the SDK: send, list (filters, order, pages), and the SSE stream."""

from __future__ import annotations

import threading
import time

import anthropic
import httpx
import pytest
from anthropic.types.beta.sessions import BetaManagedAgentsSessionEvent
from pydantic import TypeAdapter

from .conftest import API_KEY
from .wire import _walk

HEADERS = {"anthropic-beta": "managed-agents-2026-04-01", "x-api-key": API_KEY}
EVENT = TypeAdapter(BetaManagedAgentsSessionEvent)


def _message(text: str) -> dict:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def _exact_event(raw: dict) -> None:
    problems: list[str] = []
    _walk(EVENT.validate_python(raw), "$", problems)
    assert not problems, problems


def test_send_returns_persisted_queued_copies(client: anthropic.Anthropic, session) -> None:
    sent = client.beta.sessions.events.send(
        session.id, events=[_message("one"), {"type": "user.interrupt"}, _message("two")]
    )
    assert [e.type for e in sent.data] == ["user.message", "user.interrupt", "user.message"]
    assert all(e.id.startswith("sevt_") and e.processed_at is None for e in sent.data)
    listed = list(client.beta.sessions.events.list(session.id))
    assert [e.id for e in listed] == [e.id for e in sent.data]
    raw = httpx.get(f"{str(client.base_url).rstrip('/')}/v1/sessions/{session.id}/events", headers=HEADERS).json()
    for event in raw["data"]:
        _exact_event(event)


def test_list_filters_order_and_pages(client: anthropic.Anthropic, session) -> None:
    ids = [e.id for e in client.beta.sessions.events.send(session.id, events=[_message(str(i)) for i in range(7)]).data]
    client.beta.sessions.update(session.id, title="t")
    assert [e.id for e in client.beta.sessions.events.list(session.id, limit=3)][:7] == ids
    first = client.beta.sessions.events.list(session.id, limit=3)
    assert len(first.data) == 3 and first.next_page
    desc = [e.id for e in client.beta.sessions.events.list(session.id, order="desc", limit=2)]
    assert desc[1:] == list(reversed(ids))
    only = list(client.beta.sessions.events.list(session.id, types=["session.updated"]))
    assert [e.type for e in only] == ["session.updated"]
    stamp = only[0].processed_at
    assert [e.type for e in client.beta.sessions.events.list(session.id, created_at_gte=stamp)] == ["session.updated"]
    assert list(client.beta.sessions.events.list(session.id, created_at_gt=stamp)) == []
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.events.list(session.id, types=["not.a_type"])


@pytest.mark.parametrize(
    "events, fragment",
    [
        ([_message("ok"), {"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_nope"}], "does not name"),
        (
            [_message("ok"), {"type": "user.tool_confirmation", "tool_use_id": "sevt_nope", "result": "allow"}],
            "does not name",
        ),
        ([{"type": "system.message", "content": [{"type": "text", "text": "x"}]}, _message("ok")], "system.message"),
        (
            [
                _message("ok"),
                {"type": "user.interrupt"},
                {"type": "system.message", "content": [{"type": "text", "text": "x"}]},
            ],
            "follow",
        ),
        ([_message("ok"), {"type": "user.message", "content": []}], "content"),
        ([_message("ok"), {"type": "agent.message", "content": [{"type": "text", "text": "x"}]}], "type"),
        ([], "events"),
    ],
)
def test_bad_events_are_rejected_whole(client: anthropic.Anthropic, session, events: list, fragment: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.events.send(session.id, events=events)
    assert fragment in info.value.body["error"]["message"]
    assert list(client.beta.sessions.events.list(session.id)) == []


def _collect(stream, want: int, out: list, ready: threading.Event) -> None:
    ready.set()
    for event in stream:
        out.append(event)
        if len(out) >= want:
            break
    stream.close()


def test_stream_delivers_every_event_in_order_to_every_subscriber(client: anthropic.Anthropic, session) -> None:
    senders, per_sender, subscribers = 4, 15, 3
    total = senders * per_sender
    received: list[list] = [[] for _ in range(subscribers)]
    threads = []
    for i in range(subscribers):
        stream = client.beta.sessions.events.stream(session.id)  # open before sending: no replay
        ready = threading.Event()
        thread = threading.Thread(target=_collect, args=(stream, total, received[i], ready), daemon=True)
        thread.start()
        ready.wait(5)
        threads.append(thread)

    def send(n: int) -> None:
        for j in range(per_sender):
            client.beta.sessions.events.send(session.id, events=[_message(f"{n}-{j}")])

    workers = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for thread in threads:
        thread.join(20)
    logged = [e.id for e in client.beta.sessions.events.list(session.id)]
    assert len(logged) == total
    for got in received:
        assert [e.id for e in got] == logged
    for n in range(senders):  # each sender's own messages keep their order
        texts = [e.content[0].text for e in received[0] if e.content[0].text.startswith(f"{n}-")]
        assert texts == [f"{n}-{j}" for j in range(per_sender)]


def test_reconnect_and_list_loses_nothing(client: anthropic.Anthropic, session) -> None:
    first: list = []
    stream = client.beta.sessions.events.stream(session.id)
    ready = threading.Event()
    reader = threading.Thread(target=_collect, args=(stream, 3, first, ready), daemon=True)
    reader.start()
    ready.wait(5)
    for i in range(3):
        client.beta.sessions.events.send(session.id, events=[_message(f"a{i}")])
    reader.join(10)
    assert len(first) == 3
    # disconnected: these arrive while nobody is listening
    for i in range(4):
        client.beta.sessions.events.send(session.id, events=[_message(f"b{i}")])
    later: list = []
    stream = client.beta.sessions.events.stream(session.id)
    ready = threading.Event()
    reader = threading.Thread(target=_collect, args=(stream, 2, later, ready), daemon=True)
    reader.start()
    ready.wait(5)
    missed = [e for e in client.beta.sessions.events.list(session.id)]
    for i in range(2):
        client.beta.sessions.events.send(session.id, events=[_message(f"c{i}")])
    reader.join(10)
    seen = {e.id for e in first} | {e.id for e in missed} | {e.id for e in later}
    assert {e.id for e in client.beta.sessions.events.list(session.id)} == seen
    assert [e.content[0].text for e in later] == ["c0", "c1"]


def test_stream_wire_format_pings_and_deletion(client: anthropic.Anthropic, agent, environment) -> None:
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    url = f"{str(client.base_url).rstrip('/')}/v1/sessions/{session.id}/events/stream?beta=true"
    lines: list[str] = []
    with (
        httpx.Client(timeout=10) as http,
        http.stream("GET", url, headers={**HEADERS, "accept": "application/json"}) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        threading.Timer(0.3, lambda: client.beta.sessions.events.send(session.id, events=[_message("hello")])).start()
        threading.Timer(1.6, lambda: client.beta.sessions.delete(session.id)).start()
        started = time.monotonic()
        for line in r.iter_lines():
            lines.append(line)
            if (line.startswith("data:") and "session.deleted" in line) or time.monotonic() - started > 8:
                break
    assert "event: user.message" in lines
    assert 'data: {"type":"ping"}' in lines  # keep-alive (1 s in tests) while idle
    assert lines.index("event: user.message") + 1 == lines.index(next(x for x in lines if "hello" in x))
    assert any(x == "event: session.deleted" for x in lines)


def test_stream_rejects_bad_requests(client: anthropic.Anthropic, session) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.events.stream("sesn_missing")
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.events.stream(session.id, event_deltas=["agent.tool_use"])  # type: ignore[list-item]
