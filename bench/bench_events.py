#!/usr/bin/env python
"""Event-log benchmark: append throughput (store and API) and SSE delivery latency, on SQLite and PostgreSQL.

    python bench/bench_events.py            # full run, ~70 s on an idle 2-core machine
    python bench/bench_events.py --quick    # shorter measurements, ~45 s
    python bench/bench_events.py --db sqlite --sections store,diag

Sections:
  store  `Store.events.append` directly (no HTTP): one appender; 16 and 64 concurrent appenders (one
         session each), which group commit writes together; and batches of 10 events per append.
  diag   what one append costs (SQL statements, thread hops, CPU), the cost of the layers under it,
         and group commit at work (appends per commit, commit time) at 1, 16 and 64 appenders.
  api    `POST /v1/sessions/{id}/events` against a real server (uvicorn in a child process).
  sse    delivery latency from `POST` to arrival on `GET /v1/sessions/{id}/events/stream`, with 1 and
         100 subscribers; the sender runs in its own process, timestamps are CLOCK_MONOTONIC.

Everything is on loopback; PostgreSQL uses a throwaway database on CORRAL_TEST_PG
(default postgresql://postgres@127.0.0.1:5432/test), dropped afterwards. Progress goes to stderr,
the tables to stdout. Helpers live beside this file: _benchlib.py (timing, tables, machine),
_events_http.py (server, API and SSE sections), _events_diag.py (the diag section).
Results and their reading: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from _benchlib import (
    MODEL,
    OTHER_NOTE,
    OverTime,
    Run,
    database,
    fmt,
    machine,
    pct,
    postgres_version,
    run_for,
    say,
    table,
    watchdog,
)
from _events_http import SseRun, api_section, api_table, child_server, responsive, sse_section, sse_table

STORE_TARGET = 10_000  # appends/s on SQLite
HARD_LIMIT_S = 150  # the whole run is killed past this (children notice and exit too)


# ---- section 1: the store -----------------------------------------------------------------------


def user_message(text: str = "x") -> Any:
    from corral.ids import new_id
    from corral.schemas.events import UserMessage

    return UserMessage(id=new_id("event"), content=[{"type": "text", "text": text}])


async def open_store(url: str, sessions: int) -> tuple[Any, list[str]]:
    from corral.config import normalize_database_url
    from corral.schemas.agents import AgentCreate
    from corral.schemas.environments import EnvironmentCreate
    from corral.schemas.sessions import SessionCreate
    from corral.service.agents import create_agent
    from corral.service.environments import create_environment
    from corral.service.sessions import create_session
    from corral.store.store import Store

    store = Store(normalize_database_url(url))
    await store.migrate()
    agent = await create_agent(store, AgentCreate(name="bench", model=MODEL))
    env = await create_environment(store, EnvironmentCreate(name=f"bench-{uuid.uuid4().hex[:8]}"))
    ids = []
    for _ in range(sessions):
        session = await create_session(store, SessionCreate(agent=agent.id, environment_id=env.id))
        ids.append(session.id)
    return store, ids


STORE_CASES = (  # (appenders, events per append): each appender has a session of its own
    (1, 1),
    (16, 1),
    (64, 1),
    (1, 10),
)


def store_case(appenders: int, batch: int) -> str:
    who = "1 appender" if appenders == 1 else f"{appenders} appenders ({appenders} sessions)"
    return f"{who}, {batch} event{'s' if batch > 1 else ''}/append"


async def store_section(url: str, seconds: float) -> list[tuple[str, int, Run]]:
    """Returns (case, events per append, run) for each of STORE_CASES."""
    store, sessions = await open_store(url, sum(n for n, _ in STORE_CASES))
    try:

        def appender(session_id: str, batch: int) -> Callable[[], Awaitable[Any]]:
            return lambda: store.events.append(session_id, [user_message() for _ in range(batch)])

        await run_for(min(0.5, seconds / 4), [appender(sessions[-1], 1)])  # warm caches and pools
        results = []
        free = iter(sessions)
        for appenders, batch in STORE_CASES:
            ops = [appender(next(free), batch) for _ in range(appenders)]
            results.append((store_case(appenders, batch), batch, await run_for(seconds, ops)))
        return results
    finally:
        await store.close()


def store_table(results: dict[str, list[tuple[str, int, Run]]]) -> str:
    rows = []
    for kind, runs in results.items():
        for case, batch, run in runs:
            rows.append(
                [
                    kind,
                    case,
                    fmt(run.ops),
                    fmt(run.rate),
                    fmt(run.rate * batch),
                    fmt(pct(run.latencies_ms, 0.5), 2),
                    fmt(pct(run.latencies_ms, 0.99), 2),
                    f"{run.other_cpu:.0%}",
                    fmt(run.errors),
                ]
            )
    notes = [OTHER_NOTE, f"target: >= {STORE_TARGET:,} appends/s on SQLite"]
    for kind, runs in results.items():
        if kind != "sqlite":
            continue
        for case, _, run in runs:
            verdict = "met" if run.rate >= STORE_TARGET else "MISSED"
            notes.append(f"SQLite, {case}: {fmt(run.rate)} appends/s -> target {verdict}")
    headers = ["db", "case", "appends", "appends/s", "events/s", "p50 ms", "p99 ms", "other CPU", "errors"]
    return table("1. Store append throughput (Store.events.append, no HTTP)", headers, rows, notes)


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter measurements (about half the time)")
    parser.add_argument("--db", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--sections", default="store,diag,api,sse", help="comma-separated: store, diag, api, sse")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    seconds = 1.0 if args.quick else 2.0
    messages, interval = (100, 0.01) if args.quick else (200, 0.01)
    watchdog(HARD_LIMIT_S, "bench_events")

    print(machine(), flush=True)
    if "postgres" in kinds and postgres_version().startswith("unavailable"):
        say("PostgreSQL unavailable: skipping it")
        kinds.remove("postgres")

    if "store" in sections:
        store_results = {}
        for kind in kinds:
            say(f"store: {kind}")
            with database(kind) as url:
                store_results[kind] = asyncio.run(store_section(url, seconds))
        print(store_table(store_results), flush=True)

    if "diag" in sections:
        from _events_diag import diag_section  # type: ignore[import-not-found]  # bench/ is on sys.path

        print(diag_section(kinds, database, open_store, user_message, seconds), flush=True)

    # one server (as ServerThread / `corral serve` make it) per database and section
    if "api" in sections:
        api_results: dict[str, list[tuple[int, Run]]] = {}
        for kind in kinds:
            say(f"api: {kind}")
            with database(kind) as url, child_server(url) as (base_url, pid):
                api_results[kind] = asyncio.run(api_section(base_url, pid, seconds, (1, 16)))
        print(api_table(api_results), flush=True)

    if "sse" in sections:
        sse_results: dict[str, list[SseRun]] = {}
        failures: list[str] = []
        # 1 and 100 subscribers at `interval`; plus 100 subscribers at a fifth of the rate, to tell the
        # cost of fan-out from the cost of overload
        cases = [(1, messages, interval), (100, messages, interval), (100, messages // 5, interval * 5)]
        for kind in kinds:
            with database(kind) as url, child_server(url) as (base_url, pid):
                for subscribers, count, every in cases:
                    where = f"{kind}, {subscribers} subscribers, {1 / every:g} msgs/s"
                    say(f"sse: {where}")
                    try:
                        run = asyncio.run(sse_section(base_url, pid, subscribers, count, every))
                        sse_results.setdefault(kind, []).append(run)
                        if run.send_errors:
                            failures.append(f"{where}: {run.send_errors} POSTs failed or timed out")
                    except Exception as exc:
                        failures.append(f"{where}: failed ({type(exc).__name__}: {exc})")
                    if not responsive(base_url):
                        failures.append(f"{where}: afterwards the server no longer answered /health (stuck)")
                        say(failures[-1])
                        break
        print(sse_table(sse_results, interval, failures), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OverTime as exc:
        print(f"bench_events: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
