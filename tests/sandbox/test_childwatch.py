"""Child processes of several event loops are waited for without a thread each (`childwatch`)."""

from __future__ import annotations

import asyncio
import threading

from corral.sandbox import childwatch


async def _spawn_and_reap(count: int) -> tuple[list[int | None], int]:
    """Start `count` sleepers, note the thread count while they run, kill them: their return codes."""
    procs = [await asyncio.create_subprocess_exec("/bin/sleep", "30") for _ in range(count)]
    threads = threading.active_count()
    for proc in procs:
        proc.kill()
    return [await asyncio.wait_for(proc.wait(), 10) for proc in procs], threads


def test_children_of_several_loops_are_reaped_without_a_thread_each() -> None:
    childwatch.install()
    before = threading.active_count()
    codes, during = asyncio.run(_spawn_and_reap(6))
    assert codes == [-9] * 6
    assert during - before < 3  # ThreadedChildWatcher: a thread per live child (other servers may add one)

    results: list[list[int | None]] = []
    other = threading.Thread(target=lambda: results.append(asyncio.run(_spawn_and_reap(2))[0]))
    other.start()
    other.join(30)
    assert results == [[-9, -9]]  # a loop in another thread gets its own children's exits
