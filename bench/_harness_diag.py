"""The diag section of `bench_harness.py`: where one turn's time goes inside the corral server.

`instrument(runtime)` runs in the server's child process (before it starts). It wraps, at class level,
the store and harness methods a turn goes through, timing each call (wall clock, so nested calls
overlap: a transaction's time includes the appends inside it), and counts the SQL statements sent
on each engine plus the event log's group commits (`Database.run_sqlite_write`). Measurement only:
nothing in corral changes behaviour.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

_LOCK = threading.Lock()
_STATS: dict[str, list[float]] = {}  # name -> [calls, total ns]


def _add(name: str, ns: int) -> None:
    with _LOCK:
        entry = _STATS.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += ns


def take() -> dict[str, tuple[int, float]]:
    """Per name: (calls, total ms) since the last call; then reset."""
    with _LOCK:
        out = {k: (int(v[0]), v[1] / 1e6) for k, v in _STATS.items()}
        _STATS.clear()
    return out


def _wrap_async(cls: Any, attr: str, name: str) -> None:
    original = getattr(cls, attr)

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return await original(*args, **kwargs)
        finally:
            _add(name, time.perf_counter_ns() - t0)

    setattr(cls, attr, timed)


def _wrap_sync(module: Any, attr: str, name: str) -> None:
    original = getattr(module, attr)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            _add(name, time.perf_counter_ns() - t0)

    setattr(module, attr, timed)


def _wrap_cm(cls: Any, attr: str, name: str) -> None:
    original = getattr(cls, attr)

    @contextlib.asynccontextmanager
    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        t0 = time.perf_counter_ns()
        try:
            async with original(*args, **kwargs) as value:
                yield value
        finally:
            _add(name, time.perf_counter_ns() - t0)

    setattr(cls, attr, timed)


def instrument(runtime: Any) -> None:
    from sqlalchemy import event

    from corral.api.routes import events as routes_events
    from corral.harness import runlog
    from corral.harness.loop import Harness
    from corral.harness.runlog import RunLog
    from corral.harness.worker import WorkerPool
    from corral.store.db import Database
    from corral.store.events import EventLog
    from corral.store.leases import Leases
    from corral.store.sessions import SessionRepo
    from corral.store.watch import Watcher

    for cls, attr, name in (
        (routes_events, "send_events", "api: service.send_events (POST handler body)"),
        (WorkerPool, "_next", "worker: WorkerPool._next (wait for a wake + claim)"),
        (Leases, "claim", "lease: Leases.claim"),
        (Leases, "claim_next", "lease: Leases.claim_next"),
        (Leases, "release", "lease: Leases.release"),
        (Harness, "run", "harness: Harness.run (whole run, model call included)"),
        (Harness, "_step", "harness: Harness._step (one pass)"),
        (Harness, "_load", "harness: Harness._load (session + log + fold)"),
        (RunLog, "refresh", "harness: RunLog.refresh (read the row + what others appended)"),
        (RunLog, "append", "harness: RunLog.append (append + keep the copy)"),
        (Harness, "_take_in", "harness: _take_in (tx)"),
        (Harness, "_start_span", "harness: _start_span (append)"),
        (Harness, "_model_done", "harness: _model_done (tx)"),
        (EventLog, "head", "store: EventLog.head"),
        (EventLog, "load", "store: EventLog.load (whole log + records)"),
        (EventLog, "read", "store: EventLog.read"),
        (EventLog, "append", "store: EventLog.append (group commit)"),
        (EventLog, "_commit", "store: EventLog._commit (one group commit, whole)"),
        (EventLog, "_notify", "store: EventLog._notify (pg_notify; no-op on SQLite)"),
        (Watcher, "_refresh", "watch: Watcher._refresh (read heads after a NOTIFY or poll)"),
        (SessionRepo, "get", "store: SessionRepo.get"),
        (SessionRepo, "snapshot", "store: SessionRepo.snapshot (row + whole log + records)"),
        (SessionRepo, "since", "store: SessionRepo.since (row + events past a position)"),
        (Database, "run_pg", "db: run_pg (one asyncpg transaction or statement)"),
        (Database, "run_sqlite_write", "db: run_sqlite_write (one group commit on SQLite)"),
    ):
        if cls is routes_events:
            original = routes_events.send_events

            async def send_events(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                t0 = time.perf_counter_ns()
                try:
                    return await _original(*args, **kwargs)
                finally:
                    _add(_name, time.perf_counter_ns() - t0)

            routes_events.send_events = send_events
            continue
        _wrap_async(cls, attr, name)
    _wrap_cm(EventLog, "transaction", "store: EventLog.transaction (Tx: SQLAlchemy write)")
    _wrap_sync(runlog, "fold", "harness: fold (pure Python)")

    db = runtime.store.db
    engines = {"write engine": db.write_engine}
    if db.read_engine is not db.write_engine:
        engines["read engine"] = db.read_engine
    for label, engine in engines.items():

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any, _label: str = label) -> None:
            verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
            if verb != "BEGIN":  # SQLite's BEGIN [IMMEDIATE] is counted by the begin listener below
                _add(f"sql: {_label}: {verb}", 0)

        event.listen(engine.sync_engine, "before_cursor_execute", count)

        def begin(_conn: Any, _label: str = label) -> None:
            _add(f"sql: {_label}: transactions (BEGIN)", 0)

        event.listen(engine.sync_engine, "begin", begin)


DIAG_ORDER = [
    "api: service.send_events (POST handler body)",
    "worker: WorkerPool._next (wait for a wake + claim)",
    "lease: Leases.claim",
    "lease: Leases.claim_next",
    "lease: Leases.release",
    "harness: Harness.run (whole run, model call included)",
    "harness: Harness._step (one pass)",
    "harness: Harness._load (session + log + fold)",
    "harness: RunLog.refresh (read the row + what others appended)",
    "harness: RunLog.append (append + keep the copy)",
    "store: SessionRepo.get",
    "store: SessionRepo.snapshot (row + whole log + records)",
    "store: SessionRepo.since (row + events past a position)",
    "store: EventLog.load (whole log + records)",
    "harness: fold (pure Python)",
    "harness: _take_in (tx)",
    "harness: _start_span (append)",
    "harness: _model_done (tx)",
    "store: EventLog.transaction (Tx: SQLAlchemy write)",
    "store: EventLog.append (group commit)",
    "store: EventLog._commit (one group commit, whole)",
    "store: EventLog._notify (pg_notify; no-op on SQLite)",
    "db: run_sqlite_write (one group commit on SQLite)",
    "db: run_pg (one asyncpg transaction or statement)",
    "store: EventLog.head",
    "store: EventLog.read",
    "watch: Watcher._refresh (read heads after a NOTIFY or poll)",
]
