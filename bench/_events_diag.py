"""Diagnostics for `bench_events.py`: what one `Store.events.append` costs, and how group commit behaves.

Three tables:
  * the cost of one append, sequential: statements sent to the database, thread hops, wall time and
    CPU per append. On SQLite the append is written by the group-commit path (`_write_sqlite` on the
    `Database`'s own `sqlite3` connection, on its writer thread), which SQLAlchemy never sees: that
    connection is traced directly (`set_trace_callback`), reads are counted at SQLAlchemy's cursor
    events. On PostgreSQL: the asyncpg query logger plus SQLAlchemy's executes;
  * micro-costs of the layers an append goes through (a hop to the writer thread, an empty write
    transaction, one append's transaction run in place, a statement through SQLAlchemy vs. raw);
  * group commit at work: `EventLog._commit` wrapped to record every batch's size and duration, at
    1, 16 and 64 concurrent appenders.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _benchlib import fmt, pct, run_for, say, table

__all__ = ["diag_section"]

APPENDS = 300
GROUP_LEVELS = (1, 16, 64)  # concurrent appenders in table 1d


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
    """Count SQLAlchemy executes/commits, aiosqlite thread hops and hops to the SQLite writer thread."""
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
            counts["aiosqlite_hop"] += 1
            return await original(self, fn, *args, **kwargs)

        aiosqlite.core.Connection._execute = counted  # type: ignore[method-assign]
        undo.append(lambda: setattr(aiosqlite.core.Connection, "_execute", original))

        db = store.db
        run_write = db.run_sqlite_write

        async def counted_write(fn: Any) -> Any:
            counts["writer_hop"] += 1
            return await run_write(fn)

        db.run_sqlite_write = counted_write  # an instance attribute shadows the method
        undo.append(lambda: delattr(db, "run_sqlite_write"))
    try:
        yield counts
    finally:
        for restore in undo:
            restore()
        for target, name, fn in hooks:
            event.remove(target, name, fn)


async def trace_driver(store: Any, counts: collections.Counter[str]) -> Callable[[], Any]:
    """Count statements as the driver sees them; returns an undo.

    SQLite: the group-commit connection `Database` opens for its writer thread (private, diagnostics
    only; it exists after the first append). PostgreSQL: asyncpg's query logger on the pool's one
    connection (the caller disposed the pool, and appends run one at a time, so it is reused).
    """
    if store.is_sqlite:
        sqlite_conn = store.db._sqlite_conn
        if sqlite_conn is None:
            raise RuntimeError("no SQLite writer connection yet: append once before tracing")
        sqlite_conn.set_trace_callback(lambda sql: counts.update(["driver:" + _head(sql)]))
        return lambda: sqlite_conn.set_trace_callback(None)
    async with store.db.write_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection

    def logger(record: Any) -> None:
        counts.update(["driver:" + _head(record.query)])

    raw.add_query_logger(logger)
    return lambda: raw.remove_query_logger(logger)


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
                wall, loop_cpu, cpu = time.perf_counter(), time.thread_time(), time.process_time()
                for _ in range(APPENDS):
                    await call()
                wall, loop_cpu = time.perf_counter() - wall, time.thread_time() - loop_cpu
                cpu = time.process_time() - cpu
                undo()
            rows.append(_cost_row(kind, label, counts, wall, loop_cpu, cpu))
    finally:
        await store.close()
    return rows


def _cost_row(
    kind: str, label: str, counts: collections.Counter[str], wall: float, loop_cpu: float, cpu: float
) -> list[Any]:
    driver = {k[7:]: v / APPENDS for k, v in counts.items() if k.startswith("driver:")}
    # SQLite: the writer connection (traced) and SQLAlchemy's engines (reads) are disjoint: add them up.
    # PostgreSQL: asyncpg's query logger misses prepared statements, which SQLAlchemy's events see.
    for key, value in counts.items():
        if key.startswith("sa:"):
            name = key[3:]
            driver[name] = (driver.get(name, 0) if kind == "sqlite" else 0) + value / APPENDS
    per = {k: v / APPENDS for k, v in counts.items() if ":" not in k}
    statements = ", ".join(f"{k} x{v:g}" for k, v in sorted(driver.items(), key=lambda kv: -kv[1]))
    hops = f"{per.get('aiosqlite_hop', 0):g} + {per.get('writer_hop', 0):g}" if kind == "sqlite" else "-"
    return [
        kind,
        label,
        f"{sum(driver.values()):g}",
        f"{per.get('sa_execute', 0):g}+{per.get('sa_commit', 0):g}",
        hops,
        fmt(wall / APPENDS * 1e6),
        fmt(loop_cpu / APPENDS * 1e6),
        fmt(cpu / APPENDS * 1e6),
        statements,
    ]


# ---- micro-costs of the layers ------------------------------------------------------------------


async def _per_call(n: int, call: Callable[[], Any]) -> tuple[float, float]:
    for _ in range(min(50, n)):
        await call()
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        await call()
    return (time.perf_counter() - wall) / n * 1e6, (time.thread_time() - cpu) / n * 1e6


async def micro_costs(kind: str, url: str, open_store: Any, message: Any, n: int) -> list[list[Any]]:
    from sqlalchemy import text

    from corral.store.commit_plan import Pending
    from corral.store.events import _write_sqlite

    store, (session_id,) = await open_store(url, 1)
    db = store.db
    loop = asyncio.get_running_loop()
    stmt = text("SELECT 1")
    rows: list[list[Any]] = []
    try:
        await store.events.append(session_id, [message()])  # opens the SQLite writer connection
        if kind == "sqlite":
            pool = ThreadPoolExecutor(1, thread_name_prefix="bench-hop")
            try:
                hop = "thread hop: run_in_executor on a 1-thread pool, no-op"
                rows.append([kind, hop, *await _per_call(n, lambda: loop.run_in_executor(pool, int))])
            finally:
                pool.shutdown(wait=True)
            empty = "Database.run_sqlite_write, empty (lock + hop + BEGIN IMMEDIATE + COMMIT)"
            rows.append([kind, empty, *await _per_call(n, lambda: db.run_sqlite_write(lambda conn: None))])

            async def in_place() -> None:
                pending = Pending(session_id, [message()], None, None, None, loop.create_future())
                db._transact(lambda conn: _write_sqlite(conn, [pending], [session_id]))

            label = "one append's transaction (_write_sqlite), run on the loop: no hop, no queue"
            rows.append([kind, label, *await _per_call(n, in_place)])
        async with _raw_select(kind, url) as (raw_label, raw_call):
            rows.append([kind, raw_label, *await _per_call(n, raw_call)])
        async with db.read() as conn:
            label = "SELECT 1, SQLAlchemy AsyncConnection (the read path)"
            rows.append([kind, label, *await _per_call(n, lambda: conn.execute(stmt))])

        async def write_select() -> None:
            async with db.write() as conn:
                await conn.execute(stmt)

        label = "Database.write() + SELECT 1 + COMMIT (SQLAlchemy; EventLog.transaction())"
        rows.append([kind, label, *await _per_call(n, write_select)])
    finally:
        await store.close()
    return [[k, what, fmt(w), fmt(c)] for k, what, w, c in rows]


@contextlib.asynccontextmanager
async def _raw_select(kind: str, url: str) -> AsyncIterator[tuple[str, Callable[[], Any]]]:
    """`SELECT 1` on the bare driver, for comparison with SQLAlchemy's (url: a file path or postgresql://)."""
    if kind == "sqlite":
        import aiosqlite

        raw = await aiosqlite.connect(url)

        async def select() -> None:
            cursor = await raw.execute("SELECT 1")
            await cursor.fetchall()
            await cursor.close()

        try:
            yield "SELECT 1, raw aiosqlite (3 hops)", select
        finally:
            await raw.close()
    else:
        import asyncpg

        pg = await asyncpg.connect(url)
        try:
            yield "SELECT 1, raw asyncpg", lambda: pg.fetch("SELECT 1")
        finally:
            await pg.close()


# ---- group commit at work -----------------------------------------------------------------------


async def group_commit(kind: str, url: str, open_store: Any, message: Any, seconds: float) -> list[list[Any]]:
    """Appends/s, batch sizes and commit times at each of GROUP_LEVELS, from a wrapped `EventLog._commit`."""
    store, sessions = await open_store(url, sum(GROUP_LEVELS))
    log = store.events
    batches: list[tuple[int, float]] = []  # (appends, ms) per commit
    original = log._commit

    async def timed(batch: list[Any]) -> None:
        start = time.perf_counter_ns()
        try:
            await original(batch)
        finally:
            batches.append((len(batch), (time.perf_counter_ns() - start) / 1e6))

    rows = []
    try:
        await run_for(min(0.5, seconds / 4), [lambda: log.append(sessions[0], [message()])])  # warm up
        log._commit = timed  # an instance attribute shadows the method; the writer task looks it up each time
        free = iter(sessions)
        for appenders in GROUP_LEVELS:
            batches.clear()
            ops = [lambda s=next(free): log.append(s, [message()]) for _ in range(appenders)]
            with counting(store) as counts:
                run = await run_for(seconds, ops)
            sizes = [n for n, _ in batches]
            times = [ms for _, ms in batches]
            appended = sum(sizes)
            rows.append(
                [
                    kind,
                    fmt(appenders),
                    fmt(run.rate),
                    fmt(len(batches) / run.seconds),
                    fmt(appended / len(batches), 1) if batches else "-",
                    fmt(max(sizes, default=0)),
                    fmt(counts["sa_execute"] / len(batches), 1) if batches else "-",
                    fmt(pct(times, 0.5), 2),
                    fmt(pct(times, 0.99), 2),
                    fmt(sum(times) / appended * 1e3) if appended else "-",
                    f"{sum(times) / 1e3 / run.seconds:.0%}",
                    f"{run.client_cpu_s / run.seconds:.0%}",
                    f"{run.other_cpu:.0%}",
                ]
            )
    finally:
        with contextlib.suppress(AttributeError):
            del log._commit
        await store.close()
    return rows


# ---- the section --------------------------------------------------------------------------------


def diag_section(kinds: list[str], database: Any, open_store: Any, message: Any, seconds: float) -> str:
    out = []
    cost_rows = []
    for kind in kinds:
        say(f"diag: append costs, {kind}")
        with database(kind) as url:
            cost_rows += asyncio.run(append_costs(kind, url, open_store, message))
    headers = ["db", "call", "stmts", "SA exec+commit", "thread hops", "wall us", "loop CPU us", "all CPU us"]
    out.append(
        table(
            "1b. What one append costs (sequential, 1 event): the store call, and the POST handler's body",
            [*headers, "statements"],
            cost_rows,
            [
                "stmts: statement executions sent to the database, incl. BEGIN/COMMIT. SQLite: the group-commit "
                "writer's sqlite3 connection (trace callback) + SQLAlchemy's executes (the reads, own pool); "
                "PostgreSQL: asyncpg's query logger merged with SQLAlchemy's executes",
                "SA exec+commit: statements and commits that went through SQLAlchemy (none for a SQLite append)",
                "thread hops (SQLite): calls aiosqlite ships to its thread (the reads) + hops to the writer thread "
                "(Database.run_sqlite_write, one per group commit)",
                "loop CPU: CPU of the event-loop thread; all CPU: every thread of the process (on SQLite the "
                "writer thread folds the events and runs sqlite3)",
                "service.send_events = what POST /v1/sessions/{id}/events runs: sessions.get (a read), checks, append",
            ],
        )
    )
    micro = []
    for kind in kinds:
        say(f"diag: micro-costs, {kind}")
        with database(kind) as url:
            micro += asyncio.run(micro_costs(kind, url, open_store, message, 1000 if seconds >= 3 else 500))
    out.append(
        table(
            "1c. Micro-costs of the layers under an append (sequential)",
            ["db", "operation", "wall us", "loop CPU us"],
            micro,
            [
                "an append on SQLite = queue + run_sqlite_write(_write_sqlite) + waking the appender; on PostgreSQL "
                "= queue + Database.write() with SELECT ... FOR UPDATE, INSERT, UPDATE, pg_notify",
                "the in-place row is the floor for ONE sequential appender on SQLite: a commit per append",
            ],
        )
    )
    group = []
    for kind in kinds:
        say(f"diag: group commit, {kind}")
        with database(kind) as url:
            group += asyncio.run(group_commit(kind, url, open_store, message, seconds))
    out.append(
        table(
            "1d. Group commit at work (Store.events.append, 1 event/append, one session per appender)",
            [
                "db",
                "appenders",
                "appends/s",
                "commits/s",
                "appends/commit",
                "max",
                "SA executes/commit",
                "commit p50 ms",
                "commit p99 ms",
                "commit us/append",
                "writer busy",
                "bench CPU",
                "other CPU",
            ],
            group,
            [
                "measured by wrapping EventLog._commit: one call = one transaction (read heads, fold, one INSERT, "
                "one UPDATE; on PostgreSQL also pg_notify) plus resolving the appenders' futures",
                "SA executes/commit: statements through SQLAlchemy, each a round trip on PostgreSQL (SELECT ... FOR "
                "UPDATE, INSERT, UPDATE, and one SELECT pg_notify per session in the batch); 0 on SQLite, where the "
                "batch is five sqlite3 statements on the writer thread (executemany for the INSERT and the UPDATE)",
                "writer busy = time inside _commit / wall time: near 100% the writer is the bottleneck and larger "
                "batches are what raise appends/s; bench CPU = this process, all threads, as a share of one core",
            ],
        )
    )
    return "\n".join(out)
