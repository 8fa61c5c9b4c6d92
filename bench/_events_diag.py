"""Diagnostics for `bench_events.py`: what one `Store.events.append` costs, and why.

Three tables:
  * the cost of one append: SQL statements and database round trips it makes, driver thread hops
    (aiosqlite runs each call on its own thread), wall time and event-loop CPU per append;
  * micro-costs of the layers under it (one thread hop, one statement raw vs. through SQLAlchemy);
  * what-if prototypes of the SQLite write path (NOT corral code; same schema, same fold, same
    JSON): the same transaction run synchronously, in one thread hop, and with group commit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _benchlib import fmt, pct, run_for, say, table

__all__ = ["diag_section"]

APPENDS = 300


# ---- counting what one append does --------------------------------------------------------------


def _head(sql: str) -> str:
    """A short label for a statement: `SELECT sessions FOR UPDATE`, `INSERT events`, `COMMIT`, ..."""
    words = sql.replace(",", " ").replace(";", " ").split()
    if not words:
        return ";"
    verb, upper = words[0].upper(), sql.upper()
    if verb == "SELECT" and "PG_NOTIFY" in upper:
        return "SELECT pg_notify"
    table = re.search(r"\sFROM\s+(\w+)", sql, re.IGNORECASE)
    if verb == "SELECT" and table:
        return f"SELECT {table.group(1)}" + (" FOR UPDATE" if re.search(r"FOR\s+UPDATE", upper) else "")
    if verb == "INSERT" and len(words) > 2:
        return "INSERT " + words[2]
    if verb == "UPDATE" and len(words) > 1:
        return "UPDATE " + words[1]
    return " ".join(words[:2])


@contextlib.contextmanager
def counting(store: Any) -> Iterator[collections.Counter[str]]:
    """Count SQLAlchemy executes/commits/checkouts, aiosqlite thread hops and driver-level statements."""
    from sqlalchemy import event

    counts: collections.Counter[str] = collections.Counter()
    hooks: list[tuple[Any, str, Callable[..., None]]] = []
    for engine in {store.db.write_engine.sync_engine, store.db.read_engine.sync_engine}:
        hooks += [
            (
                engine,
                "before_cursor_execute",
                lambda _c, _cur, sql, *a: counts.update(["sa_execute", "sa:" + _head(sql)]),
            ),
            (engine, "commit", lambda *a: counts.update(["sa_commit"])),
        ]
    for target, name, fn in hooks:
        event.listen(target, name, fn)
    undo: list[Callable[[], None]] = []
    if store.is_sqlite:
        import aiosqlite.core

        original = aiosqlite.core.Connection._execute

        async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            counts["thread_hop"] += 1
            return await original(self, fn, *args, **kwargs)

        aiosqlite.core.Connection._execute = counted  # type: ignore[method-assign]
        undo.append(lambda: setattr(aiosqlite.core.Connection, "_execute", original))
    try:
        yield counts
    finally:
        for restore in undo:
            restore()
        for target, name, fn in hooks:
            event.remove(target, name, fn)


async def trace_driver(store: Any, counts: collections.Counter[str]) -> Callable[[], Any]:
    """Count statements as the driver sees them (sqlite3 trace / asyncpg query logger); returns an undo."""
    conns = []
    async with store.db.write_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        if store.is_sqlite:
            sqlite_conn = raw._conn  # aiosqlite's sqlite3 connection (private, diagnostics only)
            sqlite_conn.set_trace_callback(lambda sql: counts.update(["driver:" + _head(sql)]))
            conns.append(lambda: sqlite_conn.set_trace_callback(None))
        else:

            def logger(record: Any) -> None:
                counts.update(["driver:" + _head(record.query)])

            raw.add_query_logger(logger)
            conns.append(lambda: raw.remove_query_logger(logger))
    return lambda: [undo() for undo in conns]


async def append_costs(kind: str, url: str, open_store: Any, message: Any) -> list[list[Any]]:
    from pydantic import TypeAdapter

    from corral.schemas.events import ClientEventParams
    from corral.service.sessions import send_events

    params = TypeAdapter(ClientEventParams)
    body = {"type": "user.message", "content": [{"type": "text", "text": "x"}]}
    store, (session_id,) = await open_store(url, 1)
    rows = []
    try:
        for _ in range(20):
            await store.events.append(session_id, [message()])
        if not store.is_sqlite:
            # one pooled connection so the query logger sees every append (the pool reuses it)
            await store.db.write_engine.dispose()
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("Store.events.append", lambda: store.events.append(session_id, [message()])),
            ("service.send_events", lambda: send_events(store, session_id, [params.validate_python(body)])),
        ]
        for label, call in cases:
            with counting(store) as counts:
                undo = await trace_driver(store, counts)
                counts.clear()
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(APPENDS):
                    await call()
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                undo()
            rows.append(_cost_row(kind, label, counts, wall, cpu))
    finally:
        await store.close()
    return rows


def _cost_row(kind: str, label: str, counts: collections.Counter[str], wall: float, cpu: float) -> list[Any]:
    write_only = label != "Store.events.append" and kind == "sqlite"  # reads use their own pool there
    driver = {} if write_only else {k[7:]: v / APPENDS for k, v in counts.items() if k.startswith("driver:")}
    if kind != "sqlite" or write_only:  # asyncpg's query logger misses prepared statements: add SQLAlchemy's
        driver.update({k[3:]: v / APPENDS for k, v in counts.items() if k.startswith("sa:")})
    per = {k: v / APPENDS for k, v in counts.items() if ":" not in k}
    statements = ", ".join(f"{k} x{v:g}" for k, v in sorted(driver.items(), key=lambda kv: -kv[1]))
    return [
        kind,
        label,
        "-" if write_only else f"{sum(driver.values()):g}",
        f"{per.get('sa_execute', 0):g}+{per.get('sa_commit', 0):g}",
        f"{per.get('thread_hop', 0):g}" if kind == "sqlite" else "-",
        fmt(wall / APPENDS * 1e6),
        fmt(cpu / APPENDS * 1e6),
        statements + (" (SQLAlchemy executes)" if write_only else ""),
    ]


# ---- micro-costs of the layers ------------------------------------------------------------------


async def _per_call(n: int, call: Callable[[], Any]) -> tuple[float, float]:
    for _ in range(min(50, n)):
        await call()
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        await call()
    return (time.perf_counter() - wall) / n * 1e6, (time.thread_time() - cpu) / n * 1e6


async def micro_costs(kind: str, url: str, n: int) -> list[list[Any]]:
    import aiosqlite
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from corral.config import normalize_database_url

    rows: list[list[Any]] = []
    if kind == "sqlite":
        raw = await aiosqlite.connect(url)
        try:

            async def select_raw() -> None:
                cursor = await raw.execute("SELECT 1")
                await cursor.fetchall()
                await cursor.close()

            rows.append([kind, "aiosqlite thread round trip (no-op)", *await _per_call(n, noop(raw))])
            rows.append([kind, "SELECT 1, raw aiosqlite (3 hops)", *await _per_call(n, select_raw)])
        finally:
            await raw.close()
    else:
        import asyncpg

        pg = await asyncpg.connect(url)
        try:
            rows.append([kind, "SELECT 1, raw asyncpg", *await _per_call(n, lambda: pg.fetch("SELECT 1"))])
        finally:
            await pg.close()
    engine = create_async_engine(normalize_database_url(url))
    stmt = text("SELECT 1")
    try:
        async with engine.connect() as conn:
            rows.append([kind, "SELECT 1, SQLAlchemy AsyncConnection", *await _per_call(n, lambda: conn.execute(stmt))])

        async def begin_select_commit() -> None:
            async with engine.begin() as conn:
                await conn.execute(stmt)

        rows.append([kind, "engine.begin() + SELECT 1 + COMMIT (pooled)", *await _per_call(n, begin_select_commit)])
    finally:
        await engine.dispose()
    return [[k, what, fmt(w), fmt(c)] for k, what, w, c in rows]


def noop(raw: Any) -> Callable[[], Any]:
    return lambda: raw._execute(lambda: None)  # aiosqlite's hop to its thread (private, diagnostics only)


# ---- what-if: the same append, written differently (prototypes, not corral code) ----------------

_SELECT = "SELECT id, last_seq, status, needs_work, usage FROM sessions WHERE id IN ({})"
_INSERT = (
    "INSERT INTO events (session_id, seq, id, type, created_at, processed_at, body, ref)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = "UPDATE sessions SET last_seq = ?, status = ?, needs_work = ?, usage = ?, updated_at = ? WHERE id = ?"


def _open_sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _write(conn: sqlite3.Connection, batch: list[tuple[str, list[Any]]]) -> None:
    """One transaction for a batch of appends, with the fold and rows `Tx.append` makes, in plain sqlite3:
    one SELECT of the sessions' heads, one INSERT of all events, one UPDATE per touched session."""
    from corral.schemas.common import now_micros
    from corral.store.derive import SessionState, apply

    now = now_micros()
    wanted = list(dict.fromkeys(session_id for session_id, _ in batch))
    conn.execute("BEGIN IMMEDIATE")
    try:
        marks = ",".join("?" * len(wanted))
        heads = {row[0]: row[1:] for row in conn.execute(_SELECT.format(marks), wanted)}
        states: dict[str, tuple[int, SessionState]] = {}
        for session_id in wanted:
            last_seq, status, needs_work, usage = heads[session_id]
            states[session_id] = (last_seq, SessionState.load(status, bool(needs_work), json.loads(usage)))
        rows = []
        for session_id, events in batch:
            seq, state = states[session_id]
            for event in events:
                seq += 1
                wire = event.model_dump(mode="json")
                apply(state, wire, now)
                body = json.dumps(wire, separators=(",", ":"))
                rows.append((session_id, seq, event.id, wire["type"], now, None, body, None))
            states[session_id] = (seq, state)
        conn.executemany(_INSERT, rows)
        conn.executemany(
            _UPDATE,
            [
                (seq, st.status, st.needs_work, json.dumps(st.usage_json(), separators=(",", ":")), now, sid)
                for sid, (seq, st) in states.items()
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class GroupCommit:
    """Appenders queue; one writer drains the queue into one transaction, run in one thread hop."""

    def __init__(self, conn: sqlite3.Connection, pool: ThreadPoolExecutor) -> None:
        self.conn, self.pool = conn, pool
        self.queue: asyncio.Queue[tuple[str, list[Any], asyncio.Future[None]]] = asyncio.Queue()
        self.batches = 0
        self.task = asyncio.create_task(self._writer())

    async def append(self, session_id: str, events: list[Any]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put((session_id, events, done))
        await done

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            try:
                await loop.run_in_executor(self.pool, _write, self.conn, [(s, e) for s, e, _ in items])
                self.batches += 1
                for *_, done in items:
                    done.set_result(None)
            except Exception as exc:
                for *_, done in items:
                    done.set_exception(exc)


async def what_if(url: str, open_store: Any, message: Any, seconds: float) -> list[list[Any]]:
    store, sessions = await open_store(url, 19)
    await store.close()
    conn = _open_sqlite(url)
    pool = ThreadPoolExecutor(1, thread_name_prefix="bench-writer")
    loop = asyncio.get_running_loop()
    rows: list[list[Any]] = []

    async def sync_on_loop() -> None:
        _write(conn, [(sessions[0], [message()])])

    async def one_hop() -> None:
        await loop.run_in_executor(pool, _write, conn, [(sessions[1], [message()])])

    try:
        for label, op in (
            ("same transaction, sqlite3 on the loop (blocking; lower bound)", sync_on_loop),
            ("same transaction in ONE thread hop (dedicated writer thread)", one_hop),
        ):
            run = await run_for(seconds, [op])
            rows.append(["1", label, fmt(run.rate), fmt(pct(run.latencies_ms, 0.5), 3), "-"])
        group = GroupCommit(conn, pool)
        run = await run_for(seconds, [lambda s=s: group.append(s, [message()]) for s in sessions[2:18]])
        group.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await group.task
        per_tx = run.ops / group.batches if group.batches else 0.0
        label = "group commit: queue + one writer, one transaction + one hop per batch"
        rows.append(["16", label, fmt(run.rate), fmt(pct(run.latencies_ms, 0.5), 3), fmt(per_tx, 1)])
    finally:
        pool.shutdown(wait=True)
        conn.close()
    return rows


# ---- the section --------------------------------------------------------------------------------


def diag_section(kinds: list[str], database: Any, open_store: Any, message: Any, seconds: float) -> str:
    out = []
    cost_rows = []
    for kind in kinds:
        say(f"diag: append costs, {kind}")
        with database(kind) as url:
            cost_rows += asyncio.run(append_costs(kind, url, open_store, message))
    out.append(
        table(
            "1b. What one append costs (sequential, 1 event): the store call, and the POST handler's body",
            ["db", "call", "driver stmts", "SA exec+commit", "thread hops", "wall us", "loop CPU us", "statements"],
            cost_rows,
            [
                "driver stmts: statements sent to the database (sqlite3 trace; asyncpg query logger + SQLAlchemy's "
                "executes), incl. BEGIN/COMMIT and, on PostgreSQL, the pool pre-ping (BEGIN; ';'; ROLLBACK)",
                "thread hops: calls aiosqlite ships to its worker thread (cursor/execute/fetch/close/commit/rollback)",
                "loop CPU: CPU time of the event-loop thread alone (SQLAlchemy, greenlet, pydantic, json, asyncio)",
                "service.send_events = what POST /v1/sessions/{id}/events runs: sessions.get (a read), checks, append",
            ],
        )
    )
    micro = []
    for kind in kinds:
        say(f"diag: micro-costs, {kind}")
        with database(kind) as url:
            micro += asyncio.run(micro_costs(kind, url, 1000 if seconds >= 3 else 500))
    out.append(
        table("1c. Micro-costs of the layers under an append", ["db", "operation", "wall us", "loop CPU us"], micro)
    )
    if "sqlite" in kinds:
        say("diag: what-if prototypes (sqlite)")
        with database("sqlite") as url:
            try:
                rows = asyncio.run(what_if(url, open_store, message, seconds))
            except Exception as exc:  # the schema moved under the prototype: report, don't fail the run
                rows = [["-", f"skipped: {type(exc).__name__}: {exc}", "-", "-", "-"]]
        out.append(
            table(
                "1d. What-if (SQLite): the same append transaction, written differently -- prototypes, not corral code",
                ["appenders", "write path", "appends/s", "p50 ms", "appends/tx"],
                rows,
                [
                    "same schema, same fold (corral.store.derive), same JSON; per transaction: BEGIN IMMEDIATE, "
                    "SELECT heads, INSERT events, UPDATE sessions, COMMIT",
                    "group commit: the 16 appenders queue their events; one writer task takes everything queued "
                    "and commits it in one transaction, then wakes them",
                ],
            )
        )
    return "\n".join(out)
