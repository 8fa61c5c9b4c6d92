"""Group commit in the event log, on the real store: concurrent appends are written together, yet each
one succeeds or fails on its own, and every session's log stays contiguous and in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from corral.config import normalize_database_url
from corral.errors import NotFound
from corral.ids import new_id
from corral.schemas.agents import AgentCreate
from corral.schemas.environments import EnvironmentCreate
from corral.schemas.events import UserMessage
from corral.schemas.sessions import SessionCreate
from corral.service.agents import create_agent
from corral.service.environments import create_environment
from corral.service.sessions import create_session
from corral.store.events import LeaseLost
from corral.store.leases import Leases
from corral.store.store import Store

from .servers import database_url


@pytest.fixture
def db_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    yield from database_url(db_kind, tmp_path)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = Store(normalize_database_url(db_url))
    await s.migrate()
    yield s
    await s.close()


async def sessions(store: Store, n: int) -> list[str]:
    agent = await create_agent(store, AgentCreate(name="log", model="claude-sonnet-4-6"))
    env = await create_environment(store, EnvironmentCreate(name=f"log-{uuid.uuid4().hex[:8]}"))
    return [(await create_session(store, SessionCreate(agent=agent.id, environment_id=env.id))).id for _ in range(n)]


def message(text: str) -> UserMessage:
    return UserMessage(id=new_id("event"), content=[{"type": "text", "text": text}])


async def test_concurrent_appends_commit_together_and_fail_alone(store: Store) -> None:
    ids = await sessions(store, 4)
    heads = {sid: await store.events.head(sid) for sid in ids}

    async def append(sid: str, i: int) -> list[int]:
        logged = await store.events.append(sid, [message(f"{sid}-{i}-a"), message(f"{sid}-{i}-b")])
        return [e.seq for e in logged]

    jobs = [append(sid, i) for i in range(25) for sid in ids]
    jobs.insert(37, store.events.append("sesn_missing", [message("lost")]))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], NotFound)
    for sid in ids:
        log = await store.events.read(sid, after=heads[sid], limit=1000)
        assert [e.seq for e in log] == list(range(heads[sid] + 1, heads[sid] + 51))  # contiguous, 2 per append
        texts = [e.json.split('"text":"')[1].split('"')[0] for e in log]
        assert texts == [f"{sid}-{i}-{part}" for i in range(25) for part in "ab"]  # in submission order
    assert all(r[1] == r[0] + 1 for r in results if isinstance(r, list))  # each append's events adjacent


async def test_a_fenced_append_fails_without_touching_its_neighbours(store: Store) -> None:
    fenced, free = await sessions(store, 2)
    await store.events.append(fenced, [message("work")], needs_work=True)
    assert await Leases(store.db, 30).claim(fenced, "worker-a")
    results = await asyncio.gather(
        store.events.append(fenced, [message("by a")], owner="worker-a"),
        store.events.append(fenced, [message("by b")], owner="worker-b"),
        store.events.append(free, [message("free")]),
        return_exceptions=True,
    )
    assert isinstance(results[1], LeaseLost)
    assert isinstance(results[0], list) and isinstance(results[2], list)
    log = await store.events.read(fenced, limit=100)
    assert "by b" not in "".join(e.json for e in log) and "by a" in "".join(e.json for e in log)


async def test_a_database_error_in_a_batch_is_isolated_to_its_append(store: Store) -> None:
    (sid,) = await sessions(store, 1)
    twice = message("same id twice")
    results = await asyncio.gather(
        store.events.append(sid, [message("before")]),
        store.events.append(sid, [twice]),
        store.events.append(sid, [twice]),  # violates the unique event id: only this one may fail
        store.events.append(sid, [message("after")]),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [list, list, IntegrityError, list]
    log = await store.events.read(sid, limit=100)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    bodies = "".join(e.json for e in log)
    assert bodies.count("same id twice") == 1 and "before" in bodies and "after" in bodies


async def test_records_and_processed_marks_ride_along_and_a_taken_key_fails_alone(store: Store) -> None:
    (sid,) = await sessions(store, 1)
    queued = await store.events.append(sid, [message("queued")], needs_work=True)
    assert '"processed_at":null' in queued[0].json
    results = await asyncio.gather(
        store.events.append(sid, [], records=[("run:x", "tool_run", {"n": 1})], processed=[queued[0].seq]),
        store.events.append(sid, [message("other")], records=[("run:x", "tool_run", {"n": 2})]),
        return_exceptions=True,
    )
    assert isinstance(results[0], list) and isinstance(results[1], IntegrityError)
    _, records = await store.events.load(sid)
    assert records["run:x"]["n"] == 1
    (marked,) = await store.events.read(sid, limit=1)
    assert '"processed_at":null' not in marked.json and '"processed_at":"' in marked.json
    assert "other" not in "".join(e.json for e in await store.events.read(sid, limit=100))


async def test_closing_the_store_commits_what_was_queued(db_url: str) -> None:
    store = Store(normalize_database_url(db_url))
    await store.migrate()
    ids = await sessions(store, 4)
    appends = [
        asyncio.ensure_future(store.events.append(ids[i % 4], [message(f"m{i}-{k}") for k in range(200)]))
        for i in range(20)
    ]
    await asyncio.sleep(0)  # queued, and the writer has started on them
    await store.close()
    results = await asyncio.gather(*appends, return_exceptions=True)
    assert all(isinstance(r, list) and len(r) == 200 for r in results), [type(r) for r in results]
    reopened = Store(normalize_database_url(db_url))
    try:
        assert sum([await reopened.events.head(sid) for sid in ids]) >= 20 * 200
    finally:
        await reopened.close()


async def test_two_processes_appending_to_one_session_keep_its_log_contiguous(store: Store, db_url: str) -> None:
    """A second store on the same database is another process: each one's idea of the session's head
    goes stale whenever the other writes, and no append may land on a stale head."""
    (sid,) = await sessions(store, 1)
    other = Store(normalize_database_url(db_url))
    try:
        start = await store.events.head(sid)
        for i in range(10):  # strictly alternating: every append after the first finds its head moved
            await store.events.append(sid, [message(f"a{i}")])
            await other.events.append(sid, [message(f"b{i}")])
        jobs = [
            s.events.append(sid, [message(f"{name}{i}-x"), message(f"{name}{i}-y")])
            for i in range(15)
            for s, name in ((store, "c"), (other, "d"))
        ]
        await asyncio.gather(*jobs)
        log = await store.events.read(sid, after=start, limit=1000)
        assert [e.seq for e in log] == list(range(start + 1, start + 1 + 20 + 60))
        texts = [e.json.split('"text":"')[1].split('"')[0] for e in log]
        assert texts[:20] == [f"{n}{i}" for i in range(10) for n in "ab"]
        assert sorted(texts[20:]) == sorted(f"{n}{i}-{p}" for n in "cd" for i in range(15) for p in "xy")
        for name in "cd":  # each append's two events stay adjacent
            for i in range(15):
                assert texts.index(f"{name}{i}-y") == texts.index(f"{name}{i}-x") + 1
        session = await store.sessions.get(sid)
        assert session is not None
    finally:
        await other.close()


async def test_a_lease_taken_over_elsewhere_fences_the_old_owner(store: Store, db_url: str) -> None:
    """The old owner's process still remembers the head it wrote; its next append must be refused."""
    (sid,) = await sessions(store, 1)
    await store.events.append(sid, [message("work")], needs_work=True)
    assert await Leases(store.db, 0.05).claim(sid, "worker-a")
    await store.events.append(sid, [message("by a")], owner="worker-a")
    other = Store(normalize_database_url(db_url))
    try:
        await asyncio.sleep(0.1)  # the lease expires
        assert await Leases(other.db, 30).claim(sid, "worker-b")
        with pytest.raises(LeaseLost):
            await store.events.append(sid, [message("late a")], owner="worker-a")
        await other.events.append(sid, [message("by b")], owner="worker-b")
        bodies = "".join(e.json for e in await store.events.read(sid, limit=100))
        assert "late a" not in bodies and "by a" in bodies and "by b" in bodies
    finally:
        await other.close()
