"""Engines for both dialects: SQLite in WAL mode with serialized writers, or PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "sqlite_sql"]

T = TypeVar("T")
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA foreign_keys=ON",
)


class Database:
    """Holds the engines. On SQLite, writes take `BEGIN IMMEDIATE` and, in this process, one at a time
    (`_write_lock`): writers queue instead of failing with `database is locked`, and across processes
    they wait on `busy_timeout`. Reads use their own pool, so streams never wait behind a write.

    SQLite also has `run_sqlite_write`: a whole transaction as one plain function on a dedicated
    thread with its own `sqlite3` connection, one thread hop instead of one per statement (the event
    log's group commit uses it). It takes the same lock, so it never contends with the engine."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock: asyncio.Lock | None = None
        self._sqlite_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._sqlite_conn: sqlite3.Connection | None = None
        self._sqlite_readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conns = threading.local()
        self._reader_list: list[sqlite3.Connection] = []
        if self.is_sqlite:
            self.write_engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
            self.read_engine = create_async_engine(url, pool_size=8, max_overflow=8)
            for engine, immediate in ((self.write_engine, True), (self.read_engine, False)):
                _configure_sqlite(engine, immediate=immediate)
        else:
            # No pool_pre_ping: it costs a round trip per checkout; asyncpg reports dead connections.
            self.write_engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600)
            self.read_engine = self.write_engine

    def _lock(self) -> asyncio.Lock:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (committed on success, rolled back on error)."""
        if not self.is_sqlite:
            async with self.write_engine.begin() as conn:
                yield conn
            return
        async with self._lock(), self.write_engine.begin() as conn:
            yield conn

    async def run_sqlite_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside `BEGIN IMMEDIATE` ... `COMMIT` (rolled back if it raises), off the loop."""
        assert self.is_sqlite
        async with self._lock():
            return await asyncio.get_running_loop().run_in_executor(self._sqlite_executor(), self._transact, fn)

    async def run_sqlite_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one read transaction (a consistent snapshot) on a reader thread: one hop
        instead of SQLAlchemy's several per statement, for reads on the harness's hot path."""
        assert self.is_sqlite
        if self._sqlite_readers is None:
            self._sqlite_readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="corral-sqlite-reader")
        return await asyncio.get_running_loop().run_in_executor(self._sqlite_readers, self._read, fn)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._reader_conns, "conn", None)
        if conn is None:
            conn = self._connect_sqlite()
            self._reader_conns.conn = conn
            self._reader_list.append(conn)
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("ROLLBACK")

    def _connect_sqlite(self) -> sqlite3.Connection:
        path = self.write_engine.url.database or ":memory:"
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        return conn

    def _sqlite_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._sqlite_thread is None:
            self._sqlite_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="corral-sqlite-writer")
        return self._sqlite_thread

    def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._sqlite_conn is None:
            self._sqlite_conn = self._connect_sqlite()
        conn = self._sqlite_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.read_engine.connect() as conn:
            yield conn

    async def dispose(self) -> None:
        if self._sqlite_thread is not None:
            conn, self._sqlite_conn = self._sqlite_conn, None
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(self._sqlite_thread, conn.close)
            self._sqlite_thread.shutdown(wait=True)
            self._sqlite_thread = None
        if self._sqlite_readers is not None:
            self._sqlite_readers.shutdown(wait=True)
            self._sqlite_readers = None
            for reader in self._reader_list:
                reader.close()
            self._reader_list.clear()
            self._reader_conns = threading.local()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def _configure_sqlite(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in _PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def sqlite_sql(statement: Any) -> tuple[str, tuple[str, ...]]:
    """SQLite SQL and positional parameter names of a Core statement, for the plain-`sqlite3` paths
    (so the schema stays in tables.py)."""
    from sqlalchemy.dialects.sqlite import dialect

    compiled = statement.compile(dialect=dialect())
    return str(compiled), tuple(compiled.positiontup or ())
