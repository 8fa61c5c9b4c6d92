"""Engines for both dialects: SQLite in WAL mode with serialized writers, or PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Database", "pg_sql", "sqlite_sql"]

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
    log's group commit uses it). It takes the same lock, so it never contends with the engine.

    PostgreSQL has the same kind of door, `run_pg`: a transaction as one coroutine on a plain
    `asyncpg` connection from a small pool of its own, for the harness's hot path (group commit,
    snapshot reads), where SQLAlchemy's per-statement overhead (~0.2-0.4 ms) was most of the cost."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock: asyncio.Lock | None = None
        self._sqlite_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._sqlite_conn: sqlite3.Connection | None = None
        self._sqlite_readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conns = threading.local()
        self._reader_list: list[sqlite3.Connection] = []
        self._pg_pool: asyncio.Task[asyncpg.Pool] | None = None
        self._pg_loop: asyncio.AbstractEventLoop | None = None
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

    async def run_pg(
        self,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        readonly: bool = False,
        snapshot: bool = False,
        transaction: bool = True,
    ) -> T:
        """Run `fn(conn)` in one transaction on a plain asyncpg connection (committed on success).

        `snapshot` makes it REPEATABLE READ, so several statements see one state of the database;
        `transaction=False` skips BEGIN/COMMIT (two round trips) for a single statement.
        Errors come out as SQLAlchemy's exception types, as on the other paths."""
        import asyncpg

        assert not self.is_sqlite
        pool = await self._pg()
        try:
            async with pool.acquire() as conn:
                if not transaction:
                    return await fn(conn)
                isolation = "repeatable_read" if snapshot else "read_committed"
                async with conn.transaction(isolation=isolation, readonly=readonly):
                    return await fn(conn)
        except asyncpg.IntegrityConstraintViolationError as e:
            raise IntegrityError(None, None, e) from e
        except asyncpg.PostgresError as e:
            raise DBAPIError(None, None, e) from e

    async def _pg(self) -> asyncpg.Pool:
        """The asyncpg pool, made once per event loop (concurrent first callers share one)."""
        import asyncpg

        loop = asyncio.get_running_loop()
        if self._pg_pool is None or self._pg_loop is not loop:
            self._pg_loop = loop
            dsn = self.write_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

            async def make() -> asyncpg.Pool:
                return await asyncpg.create_pool(
                    dsn, min_size=1, max_size=10, max_inactive_connection_lifetime=300, reset=_keep_session_state
                )

            self._pg_pool = loop.create_task(make())
        return await asyncio.shield(self._pg_pool)

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
        if self._pg_pool is not None:
            making, self._pg_pool = self._pg_pool, None
            if self._pg_loop is asyncio.get_running_loop():
                with contextlib.suppress(Exception):
                    await (await making).close()
            elif making.done() and not making.cancelled() and making.exception() is None:
                making.result().terminate()
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


async def _keep_session_state(_conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (one round trip per use): `run_pg` callers change
    no session state (no SET, LISTEN, cursors or advisory locks), and an open transaction is still
    rolled back by the pool before this is called."""


def pg_sql(statement: Any) -> tuple[str, tuple[str, ...]]:
    """PostgreSQL SQL (`$n` parameters) and positional parameter names of a Core statement, for `run_pg`."""
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    compiled = statement.compile(dialect=dialect())
    return str(compiled), tuple(compiled.positiontup or ())


def sqlite_sql(statement: Any) -> tuple[str, tuple[str, ...]]:
    """SQLite SQL and positional parameter names of a Core statement, for the plain-`sqlite3` paths
    (so the schema stays in tables.py)."""
    from sqlalchemy.dialects.sqlite import dialect

    compiled = statement.compile(dialect=dialect())
    return str(compiled), tuple(compiled.positiontup or ())
