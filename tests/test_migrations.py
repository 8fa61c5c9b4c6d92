"""The alembic migrations build exactly the schema `store/tables.py` declares, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from corral.config import normalize_database_url
from corral.store import tables
from corral.store.db import Database
from corral.store.migrate import upgrade

from .servers import database_url


@pytest.fixture
def db_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    yield from database_url(db_kind, tmp_path)


async def test_migrations_match_the_declared_schema(db_kind: str, db_url: str) -> None:
    db = Database(normalize_database_url(db_url))
    try:
        await upgrade(db)
        async with db.write_engine.connect() as conn:

            def differences(sync_conn):  # type: ignore[no-untyped-def]
                return compare_metadata(MigrationContext.configure(sync_conn), tables.metadata)

            def event_indexes(sync_conn):  # type: ignore[no-untyped-def]
                return {ix["name"]: ix for ix in inspect(sync_conn).get_indexes("events")}

            diff = await conn.run_sync(differences)
            indexes = await conn.run_sync(event_indexes)
    finally:
        await db.dispose()
    assert diff == [], diff
    assert "ix_events_session_type" not in indexes
    ref = indexes["ix_events_session_ref"]
    where = ref.get("dialect_options", {}).get(f"{'sqlite' if db_kind == 'sqlite' else 'postgresql'}_where")
    assert where is not None and "ref IS NOT NULL" in str(where)
