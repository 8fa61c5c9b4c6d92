"""Real corral servers for tests: uvicorn on a free loopback port, over SQLite or a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from corral.api.app import create_app
from corral.config import Settings
from corral.listen import listen_socket

PG_ADMIN_URL = os.environ.get("CORRAL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway database on the test PostgreSQL server, dropped afterwards."""
    import asyncpg

    name = f"corral_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_url(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield str(tmp / "corral.db")
    else:
        with postgres_database() as url:
            yield url


@contextmanager
def serving(db_kind: str, tmp: Path, **settings: Any) -> Iterator[ServerThread]:
    """A started server with `settings` on a fresh database of `db_kind` (see `database_url`), stopped after."""
    for url in database_url(db_kind, tmp):
        srv = ServerThread(Settings(database_url=url, **settings)).start()
        try:
            yield srv
        finally:
            srv.stop()


class ServerThread:
    """uvicorn serving `create_app(settings)` in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.sock = listen_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    @property
    def runtime(self):
        return self.app.state.runtime

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
