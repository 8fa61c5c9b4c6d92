"""Processes and client plumbing for `bench_harness.py`.

Three processes take part in every measurement, so each one's CPU can be told apart:

- the fake model (`tests/fake_model.py` FakeModel) in its own child process, answering instantly;
- the corral server (`tests/servers.py` ServerThread: uvicorn + harness workers) in another child,
  its model client wrapped in `TimedModel`, which stamps each model call (CLOCK_MONOTONIC, so the
  stamps compare with the load generator's);
- the load generator (the benchmark process): raw httpx for `POST .../events` and the SSE stream,
  the official SDK for the direct model calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _benchlib import MODEL, say

API_KEY = "bench-key"
HEADERS = {"x-api-key": API_KEY, "anthropic-beta": "managed-agents-2026-04-01"}
MODEL_KEY = "fake-key"
NO_SUCH_TOOL = "bench_no_such_tool"  # a tool the agent does not have: the harness refuses it without running it
REPLY_TEXT = "Done."


# ---- the user text carries the turn's marker and its number of model steps ----------------------


def user_text(steps: int, marker: str) -> str:
    return f"bench {steps} {marker}"


def turn_of(messages: list[dict[str, Any]]) -> tuple[int, str, int]:
    """(steps wanted, marker, model calls already made in this turn) from a Messages request."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") != "user" or not isinstance(m.get("content"), list):
            continue
        texts = [b.get("text", "") for b in m["content"] if b.get("type") == "text"]
        words = texts[-1].split() if texts else []
        if len(words) == 3 and words[0] == "bench":
            done = sum(1 for later in messages[i + 1 :] if later.get("role") == "assistant")
            return int(words[1]), words[2], done
    return 1, "?", 0


def respond(body: dict[str, Any]) -> Any:
    """The fake's answer: (steps - 1) calls to a tool the agent lacks (refused by the harness without
    running anything, so the next step follows at once), then one short text."""
    from tests.fake_model import Reply

    steps, _, done = turn_of(body.get("messages") or [])
    if done < steps - 1:
        return Reply(tool_use=[(NO_SUCH_TOOL, {"step": done})])
    return Reply(text=REPLY_TEXT)


# ---- the fake model in a child process ----------------------------------------------------------


def _fake_main(conn: Any, parent: int) -> None:
    from tests.fake_model import FakeModel

    with FakeModel() as fake:
        fake.respond_with(respond)
        conn.send(fake.url)
        while True:
            if not conn.poll(0.5):
                if os.getppid() != parent:
                    return
                continue
            cmd = conn.recv()
            if cmd == "stop":
                return
            if cmd == "requests":  # bodies of the requests served since the last reset, then reset
                conn.send([r.json for r in fake.model_requests])
                fake.reset()
                fake.respond_with(respond)
            elif cmd == "count":
                reqs = fake.requests
                conn.send({"served": sum(r.served is not None for r in reqs), "all": len(reqs)})
                fake.reset()
                fake.respond_with(respond)


@dataclass
class Child:
    pid: int
    url: str
    conn: Any

    def ask(self, cmd: str, timeout: float = 30) -> Any:
        self.conn.send(cmd)
        if not self.conn.poll(timeout):
            raise RuntimeError(f"child {self.pid} did not answer {cmd!r}")
        return self.conn.recv()


@contextlib.contextmanager
def _child(target: Any, args: tuple[Any, ...], what: str) -> Iterator[Child]:
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, theirs, os.getpid()), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not ours.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start (see its output above)")
        yield Child(proc.pid or 0, ours.recv(), ours)
    finally:
        stopping = time.perf_counter()
        with contextlib.suppress(OSError):
            ours.send("stop")
        proc.join(10)
        if proc.is_alive():
            say(f"{what} did not stop in {time.perf_counter() - stopping:.0f}s: terminating it")
            proc.terminate()
            proc.join(5)


@contextlib.contextmanager
def fake_model() -> Iterator[Child]:
    with _child(_fake_main, (), "fake model") as child:
        yield child


# ---- the corral server in a child process -------------------------------------------------------


class TimedModel:
    """Wraps the runtime's ModelClient: records (marker, start ns, end ns) of every model call, from the
    harness's first read of the stream to the finished `ModelResponse`, less the time the harness held
    the stream between two items (it waits there for the step before to commit, see
    `RunLog.append_behind`): the start is moved later by that much, so that time counts as the harness's,
    not the model's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        from corral.models.base import ModelResponse

        start, held = time.perf_counter_ns(), 0
        _, marker, _ = turn_of(request.messages)
        async for item in self.inner.stream(request):
            if isinstance(item, ModelResponse):
                with self.lock:
                    self.calls.append((marker, start + held, time.perf_counter_ns()))
            handed = time.perf_counter_ns()
            yield item
            held += time.perf_counter_ns() - handed

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def take(self) -> list[tuple[str, int, int]]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


def _server_main(url: str, data_dir: str, fake_url: str, workers: int, diag: bool, conn: Any, parent: int) -> None:
    from tests.servers import ServerThread

    from corral.config import Settings

    settings = Settings(
        database_url=url,
        api_key=API_KEY,
        data_dir=Path(data_dir),
        workers=workers,
        anthropic_base_url=fake_url,
        anthropic_api_key=MODEL_KEY,
    )
    server = ServerThread(settings)
    timed = TimedModel(server.runtime.model_client())
    server.runtime.model = timed  # Runtime.start_workers keeps a model that is already set
    if diag:
        from _harness_diag import instrument

        instrument(server.runtime)
    server.start()
    conn.send(server.url)
    try:
        while True:
            if not conn.poll(0.5):
                if os.getppid() != parent:
                    return
                continue
            cmd = conn.recv()
            if cmd == "stop":
                return
            if cmd == "calls":
                conn.send(timed.take())
            elif cmd == "stats":
                from _harness_diag import take

                conn.send(take())
    finally:
        server.stop()


@contextlib.contextmanager
def corral_server(url: str, fake_url: str, workers: int, diag: bool = False) -> Iterator[Child]:
    """A corral server in a child process; with `diag`, instrumented (see _harness_diag.py)."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-data-") as data_dir:
        os.chmod(data_dir, 0o711)  # as tests/conftest.py's sandbox_root: else the runtime logs that sandboxes are off
        with _child(_server_main, (url, data_dir, fake_url, workers, diag), "corral server") as child:
            yield child


def responsive(base_url: str, timeout: float = 3.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{base_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


# ---- the client side ----------------------------------------------------------------------------


async def make_sessions(client: Any, count: int, concurrency: int = 16) -> list[str]:
    """One agent (no tools, a short system prompt), one environment, `count` sessions."""
    body = {"name": "bench", "model": MODEL, "system": "You are a benchmark. Answer briefly."}
    agent = (await client.post("/v1/agents", json=body)).raise_for_status().json()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    env = (await client.post("/v1/environments", json={"name": name})).raise_for_status().json()
    slots = asyncio.Semaphore(concurrency)

    async def one() -> str:
        async with slots:
            resp = await client.post("/v1/sessions", json={"agent": agent["id"], "environment_id": env["id"]})
            return str(resp.raise_for_status().json()["id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


@dataclass
class Seen:
    type: str
    id: str
    at: int  # perf_counter_ns at arrival
    data: dict[str, Any]


@dataclass
class Feed:
    """One session's SSE stream, read in the background; frames split by hand (cheaper than the SDK)."""

    session_id: str
    events: list[Seen] = field(default_factory=list)
    idles: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None

    def start(self, client: Any) -> None:
        self.task = asyncio.create_task(self._read(client))

    async def _read(self, client: Any) -> None:
        try:
            async with client.stream("GET", f"/v1/sessions/{self.session_id}/events/stream") as resp:
                resp.raise_for_status()
                self.opened.set()
                buffer = b""
                async for chunk in resp.aiter_raw():
                    arrived = time.perf_counter_ns()
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = json.loads(line[5:])
                        kind = data.get("type", "")
                        if kind == "ping":
                            continue
                        self.events.append(Seen(kind, data.get("id", ""), arrived, data))
                        if kind == "session.status_idle":
                            self.idles += 1
                    self.changed.set()
        except BaseException as exc:  # reported by the waiters
            self.error = exc
            self.opened.set()
            self.changed.set()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def wait_idles(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.idles < count:
                if self.error is not None:
                    raise RuntimeError(f"stream of {self.session_id} broke: {self.error!r}")
                self.changed.clear()
                if self.idles >= count:
                    break
                await self.changed.wait()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


async def open_feeds(client: Any, session_ids: list[str], concurrency: int = 32) -> list[Feed]:
    feeds = [Feed(sid) for sid in session_ids]
    slots = asyncio.Semaphore(concurrency)

    async def open_one(feed: Feed) -> None:
        async with slots:
            feed.start(client)
            await asyncio.wait_for(feed.opened.wait(), 60)
            if feed.error is not None:
                raise RuntimeError(f"could not open the stream of {feed.session_id}: {feed.error!r}")

    await asyncio.gather(*(open_one(f) for f in feeds))
    return feeds


def message_body(text: str) -> dict[str, Any]:
    return {"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]}


@dataclass
class Turn:
    """One turn as the client saw it (ns on CLOCK_MONOTONIC), plus its events."""

    marker: str
    steps: int
    sent: int
    posted: int  # POST answered
    events: list[Seen]

    def first(self, kind: str) -> int | None:
        return next((e.at for e in self.events if e.type == kind), None)

    @property
    def idle(self) -> int:
        return self.events[-1].at


async def run_turn(client: Any, feed: Feed, steps: int, marker: str, timeout: float = 60) -> Turn:
    """POST one user.message and wait on the stream until the session idles again."""
    start_index, idles = len(feed.events), feed.idles
    sent = time.perf_counter_ns()
    resp = await client.post(f"/v1/sessions/{feed.session_id}/events", json=message_body(user_text(steps, marker)))
    posted = time.perf_counter_ns()
    if resp.status_code != 200:
        raise RuntimeError(f"POST events: {resp.status_code} {resp.text[:200]}")
    await feed.wait_idles(idles + 1, timeout)
    events = feed.events[start_index:]
    end = next(i for i, e in enumerate(events) if e.type == "session.status_idle")
    return Turn(marker, steps, sent, posted, events[: end + 1])
