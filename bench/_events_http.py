"""The HTTP sections of `bench_events.py`: a corral server in a child process, appends through
`POST /v1/sessions/{id}/events`, and SSE delivery latency on `GET /v1/sessions/{id}/events/stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _benchlib import MODEL, OTHER_NOTE, Run, fmt, machine_cpu, pct, process_cpu, run_for, say, table

API_KEY = "bench-key"
HEADERS = {"x-api-key": API_KEY, "anthropic-beta": "managed-agents-2026-04-01"}
SSE_TARGET_MS = 50.0  # p99 at 100 subscribers


# ---- server in a child process ------------------------------------------------------------------


def _serve(url: str, data_dir: str, conn: Any, parent: int) -> None:
    """Child process: a ServerThread until the parent says stop (or goes away).

    ServerThread listens on `corral.listen.listen_socket`, as `corral serve` does (TCP_NODELAY on
    accepted connections); the benchmark leaves the server exactly as it is made.
    """
    from tests.servers import ServerThread

    from corral.config import Settings

    settings = Settings(database_url=url, api_key=API_KEY, data_dir=Path(data_dir), workers=0, poll_interval=0.5)
    server = ServerThread(settings)
    server.start()
    conn.send(server.url)
    while not conn.poll(0.5):
        if os.getppid() != parent:
            break
    server.stop()


@contextlib.contextmanager
def child_server(url: str) -> Iterator[tuple[str, int]]:
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    with tempfile.TemporaryDirectory(prefix="corral-bench-data-") as data_dir:
        proc = ctx.Process(target=_serve, args=(url, data_dir, theirs, os.getpid()), daemon=True)
        proc.start()
        try:
            if not ours.poll(60):
                raise RuntimeError("server did not start")
            yield ours.recv(), proc.pid or 0
        finally:
            stopping = time.perf_counter()
            with contextlib.suppress(OSError):
                ours.send("stop")
            proc.join(8)
            if proc.is_alive():
                say(f"server did not stop in {time.perf_counter() - stopping:.0f}s: terminating it")
                proc.terminate()
                proc.join(5)


def responsive(base_url: str, timeout: float = 3.0) -> bool:
    """Does the server still answer /health?"""
    import httpx

    try:
        return httpx.get(f"{base_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


async def http_setup(client: Any, sessions: int) -> list[str]:
    agent = (await client.post("/v1/agents", json={"name": "bench", "model": MODEL})).raise_for_status().json()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    env = (await client.post("/v1/environments", json={"name": name})).raise_for_status().json()
    ids = []
    for _ in range(sessions):
        resp = await client.post("/v1/sessions", json={"agent": agent["id"], "environment_id": env["id"]})
        ids.append(resp.raise_for_status().json()["id"])
    return ids


def message_body(text: str) -> dict[str, Any]:
    return {"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]}


# ---- section 2: the API -------------------------------------------------------------------------


async def api_section(
    base_url: str, server_pid: int, seconds: float, concurrency_levels: tuple[int, ...]
) -> list[tuple[int, Run]]:
    import httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, limits=limits, timeout=30) as client:
        sessions = await http_setup(client, 17)

        def poster(session_id: str) -> Callable[[], Awaitable[Any]]:
            async def post() -> None:
                resp = await client.post(f"/v1/sessions/{session_id}/events", json=message_body("hello"))
                if resp.status_code != 200:
                    raise RuntimeError(resp.text)

            return post

        await run_for(min(0.5, seconds / 4), [poster(sessions[16])])
        results = []
        for concurrency in concurrency_levels:
            server_cpu = process_cpu(server_pid)
            run = await run_for(seconds, [poster(s) for s in sessions[:concurrency]])
            run.server_cpu_s = process_cpu(server_pid) - server_cpu
            results.append((concurrency, run))
        return results


def api_table(results: dict[str, list[tuple[int, Run]]]) -> str:
    rows = []
    for kind, runs in results.items():
        for concurrency, run in runs:
            p50, p99 = pct(run.latencies_ms, 0.5), pct(run.latencies_ms, 0.99)
            row = [kind, fmt(concurrency), fmt(run.ops), fmt(run.rate), fmt(p50, 2), fmt(p99, 2)]
            per_request = run.server_cpu_s / run.ops * 1e3 if run.ops else float("nan")
            cpu = [
                fmt(per_request, 2),
                f"{run.server_cpu_s / run.seconds:.0%}",
                f"{run.client_cpu_s / run.seconds:.0%}",
                f"{run.other_cpu:.0%}",
            ]
            rows.append([*row, *cpu, run.errors])
    notes = [
        "one user.message per request; each concurrent client posts to its own session",
        "client (httpx, this process) and server (uvicorn + corral, a child process) share the same cores; "
        "CPU columns are shares of one core",
        OTHER_NOTE,
    ]
    headers = ["db", "clients", "requests", "requests/s", "p50 ms", "p99 ms"]
    headers += ["server CPU ms/req", "server CPU", "client CPU", "other CPU", "errors"]
    return table("2. Append through the API (POST /v1/sessions/{id}/events)", headers, rows, notes)


# ---- section 3: SSE delivery --------------------------------------------------------------------


SENDER_IN_FLIGHT = 4  # POSTs the sender lets overlap; past that it falls behind its schedule


def _sender(base_url: str, session_id: str, count: int, interval: float, conn: Any) -> None:
    """Child process: post `count` user.messages, one every `interval` s, each carrying its send time.

    POSTs start on schedule and may overlap (up to SENDER_IN_FLIGHT), so a slow answer does not slow
    the offered rate until the server is clearly overloaded; then the sender falls behind (reported
    as the achieved rate) instead of piling up requests. It stops sending at a deadline.
    """
    import httpx

    async def send_all() -> dict[str, Any]:
        cpu = 0.0
        post_ms: list[float] = []
        ok: list[int] = []
        errors = 0
        slots = asyncio.Semaphore(SENDER_IN_FLIGHT)
        async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=8) as client:
            await asyncio.gather(*(client.get("/health") for _ in range(SENDER_IN_FLIGHT)))  # connect first
            conn.send("ready")

            async def post(i: int) -> None:
                nonlocal errors
                try:
                    sent = time.perf_counter_ns()
                    text = f"bench {i} {sent}"
                    resp = await client.post(f"/v1/sessions/{session_id}/events", json=message_body(text))
                    post_ms.append((time.perf_counter_ns() - sent) / 1e6)
                    if resp.status_code == 200:
                        ok.append(i)
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                finally:
                    slots.release()

            start, cpu = time.perf_counter(), time.process_time()
            deadline = start + count * interval * 2 + 5
            posts = []
            for i in range(count):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()
                if time.perf_counter() > deadline:
                    slots.release()
                    break
                posts.append(asyncio.create_task(post(i)))
            await asyncio.gather(*posts)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu
            return {"post_ms": post_ms, "ok": len(ok), "errors": errors, "seconds": seconds, "cpu": cpu}

    conn.send(asyncio.run(send_all()))


@dataclass
class SseRun:
    subscribers: int
    messages: int
    interval: float
    latencies_ms: list[float]
    missing: int
    post_ms: list[float]
    send_errors: int
    sent_per_s: float
    spread_ms: list[float]  # per message: last arrival - first arrival, over the subscribers
    server_cpu: float  # share of one core, while sending
    client_cpu: float  # the subscribers' process, same window
    other_cpu: float  # the rest of the machine (minus the sender), same window


async def sse_section(base_url: str, server_pid: int, subscribers: int, messages: int, interval: float) -> SseRun:
    import httpx

    limits = httpx.Limits(max_connections=subscribers + 8, max_keepalive_connections=subscribers + 8)
    timeout = httpx.Timeout(30, read=None)
    async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, limits=limits, timeout=timeout) as client:
        (session_id,) = await http_setup(client, 1)
        latencies: list[float] = []
        arrivals: list[tuple[int, int]] = [(2**63, 0)] * messages  # per message: (first, last) arrival
        received = [0] * subscribers
        target = [messages]  # deliveries each subscriber should see (lowered to what was actually sent)
        opened = asyncio.Semaphore(0)
        all_in = asyncio.Event()

        def record(k: int, data: dict[str, Any], arrived: int) -> None:
            if data.get("type") != "user.message":
                return
            _, index, sent = data["content"][0]["text"].split()
            latencies.append((arrived - int(sent)) / 1e6)
            first, last = arrivals[int(index)]
            arrivals[int(index)] = (min(first, arrived), max(last, arrived))
            received[k] += 1
            if received[k] >= target[0] and min(received) >= target[0]:
                all_in.set()

        async def subscribe(k: int) -> None:
            async with client.stream("GET", f"/v1/sessions/{session_id}/events/stream") as resp:
                resp.raise_for_status()
                opened.release()
                buffer = b""
                async for chunk in resp.aiter_raw():  # SSE frames, split by hand (cheaper than aiter_lines)
                    arrived = time.perf_counter_ns()
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        if line.startswith(b"data:") and b"user.message" in line:
                            record(k, json.loads(line[5:]), arrived)

        tasks = [asyncio.create_task(subscribe(k)) for k in range(subscribers)]
        try:

            async def all_opened() -> None:
                for _ in range(subscribers):
                    await opened.acquire()

            await asyncio.wait_for(all_opened(), 20)
            ctx = mp.get_context("spawn")
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_sender, args=(base_url, session_id, messages, interval, theirs), daemon=True)
            proc.start()
            while not ours.poll() and proc.is_alive():  # the sender says "ready" once it has imported httpx
                await asyncio.sleep(0.01)
            ours.recv()
            wall, cpu, server_cpu = time.perf_counter(), time.process_time(), process_cpu(server_pid)
            everyone = machine_cpu()
            sent: dict[str, Any] = {"post_ms": [], "ok": 0, "errors": -1, "seconds": float("nan"), "cpu": 0.0}
            deadline = time.monotonic() + 30 + messages * interval * 3
            while time.monotonic() < deadline and not ours.poll():
                await asyncio.sleep(0.05)
            if ours.poll():
                sent = ours.recv()
            say(f"  sender: {sent['ok']} posts ok, {sent['errors']} failed, in {sent['seconds']:.1f}s")
            target[0] = sent.get("ok", 0)
            if min(received) >= target[0]:
                all_in.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 5)
            wall = time.perf_counter() - wall
            cpu, server_cpu = time.process_time() - cpu, process_cpu(server_pid) - server_cpu
            everyone = machine_cpu() - everyone
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return SseRun(
        subscribers=subscribers,
        messages=messages,
        interval=interval,
        latencies_ms=latencies,
        missing=subscribers * target[0] - len(latencies),
        post_ms=sent["post_ms"],
        send_errors=sent["errors"],
        sent_per_s=sent["ok"] / sent["seconds"],
        spread_ms=[(last - first) / 1e6 for first, last in arrivals if last],
        server_cpu=server_cpu / wall,
        client_cpu=cpu / wall,
        other_cpu=max(0.0, everyone - cpu - server_cpu - sent["cpu"]) / wall,
    )


def sse_table(results: dict[str, list[SseRun]], interval: float, failures: list[str]) -> str:
    rows = []
    notes = [
        "latency = arrival at the subscriber - time stamped just before the POST; the sender starts POSTs on a "
        f"fixed schedule, up to {SENDER_IN_FLIGHT} in flight (then it falls behind: 'sent' is the rate achieved)",
        "fan-out spread = per message, last arrival - first arrival across the subscribers (p50 over messages)",
        "server / subscribers CPU = share of one core while sending; subscribers run in one asyncio process, the "
        f"sender in another, the server in a third: all share {len(os.sched_getaffinity(0))} cores with "
        "whatever else runs on the machine",
        OTHER_NOTE + " (the sender's own CPU is left out)",
        f"target: p99 <= {SSE_TARGET_MS:g} ms at 100 subscribers ({1 / interval:g} msgs/s)",
    ]
    for kind, runs in results.items():
        for r in runs:
            p50, p99 = pct(r.latencies_ms, 0.5), pct(r.latencies_ms, 0.99)
            rows.append(
                [
                    kind,
                    fmt(r.subscribers),
                    f"{1 / r.interval:g} -> {fmt(r.sent_per_s)}",
                    fmt(len(r.latencies_ms)),
                    fmt(r.missing),
                    fmt(p50, 1),
                    fmt(p99, 1),
                    fmt(max(r.latencies_ms, default=float("nan")), 1),
                    fmt(pct(r.spread_ms, 0.5), 1),
                    fmt(pct(r.post_ms, 0.5), 1),
                    f"{r.server_cpu:.0%}",
                    f"{r.client_cpu:.0%}",
                    f"{r.other_cpu:.0%}",
                ]
            )
            if r.subscribers >= 100 and r.interval == interval:
                verdict = "met" if p99 <= SSE_TARGET_MS else "MISSED"
                where = f"{kind}, {r.subscribers} subscribers"
                notes.append(f"{where}: p99 {fmt(p99, 1)} ms -> target {verdict}")
    notes += [f"PROBLEM: {failure}" for failure in failures]
    headers = ["db", "subscribers", "msgs/s offered -> sent", "deliveries", "missing", "p50 ms"]
    headers += ["p99 ms"]
    headers += ["max ms", "fan-out spread ms", "POST p50 ms", "server CPU", "subscribers CPU", "other CPU"]
    return table("3. SSE delivery latency (POST -> GET /v1/sessions/{id}/events/stream)", headers, rows, notes)
