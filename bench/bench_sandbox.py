"""Sandbox latency: cold start and warm tool calls, bubblewrap and gVisor vs. a plain subprocess.

Run alone: `python bench/bench_sandbox.py [--quick] [--cold N] [--warm N] [--sessions N]`. Prints one table
(milliseconds).
"cold" = provision a sandbox and get its first ping back (what a session's first tool call pays on top
of the call itself); "warm" = one tool call in a running sandbox; "bwrap pool" = a new session's sandbox
through `SandboxPool.get` with all limits and the egress socket, started on demand or adopted from the
prewarmed reserve. The baseline runs the same helper as a
plain subprocess (`UnsafeSandbox`), so the difference is the price of isolation. "gvisor" rows are the
same with `CORRAL_SANDBOX=gvisor` (runsc must be installed: scripts/install-runsc). Last, the time from a
`user.message` to the first agent event and to the first tool result, with lazy and eager provisioning
(`_first_event.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from corral.sandbox.base import SandboxSpec
from corral.sandbox.channel import HelperSandbox
from corral.sandbox.gvisor import GvisorSandbox, check_gvisor
from corral.sandbox.local import BwrapSandbox, check_isolation
from corral.sandbox.unsafe import UnsafeSandbox

Starter = Callable[[SandboxSpec], Awaitable[HelperSandbox]]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def timed(fn: Callable[[], Awaitable[object]], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - start)
    return out


async def bench_backend(name: str, start: Starter, root: Path, cold_n: int, warm_n: int) -> list[tuple]:
    spec = SandboxSpec(f"bench-{name}", str(root / name / "workspace"))
    rows = []

    async def cold() -> None:
        sandbox = await start(spec)
        await sandbox.close()

    # time only provision + first ping: close() is excluded
    samples = []
    await cold()
    for _ in range(cold_n):
        t0 = time.perf_counter()
        sandbox = await start(spec)
        samples.append(time.perf_counter() - t0)
        await sandbox.close()
    rows.append((name, "cold start (provision + ping)", samples))

    sandbox = await start(spec)
    try:
        await sandbox.execute("write", {"file_path": "data.txt", "content": "x" * 4095 + "\n"})
        rows.append((name, "ping", await timed(sandbox.ping, warm_n)))
        rows.append((name, "bash `true`", await timed(lambda: sandbox.execute("bash", {"command": "true"}), warm_n)))
        rows.append(
            (name, "bash `/bin/true`", await timed(lambda: sandbox.execute("bash", {"command": "/bin/true"}), warm_n))
        )
        rows.append(
            (name, "read 4 KiB", await timed(lambda: sandbox.execute("read", {"file_path": "data.txt"}), warm_n))
        )
    finally:
        await sandbox.close()
    return rows


async def bench_pool(root: Path, cold_n: int, backend: str = "bwrap") -> list[tuple]:
    """A new session's sandbox as the harness gets it: `SandboxPool.get`, with everything a real sandbox
    gets (its own uid and workdir, cgroup limits, rlimits, an egress proxy socket), with and without a
    prewarmed sandbox to adopt."""
    from corral.sandbox.pool import SandboxPool

    rows = []
    for prewarm in (0, 1):
        pool = SandboxPool(root / f"pool-{backend}-{prewarm}", backend, prewarm=prewarm)  # type: ignore[arg-type]
        samples = []
        try:
            for i in range(cold_n + 3):
                if prewarm:  # the reserve is refilled in the background between sessions
                    for _ in range(400):
                        if any(pool._warm.values()):
                            break
                        await asyncio.sleep(0.005)
                t0 = time.perf_counter()
                sandbox = await pool.get(SandboxSpec(f"s{i}", ""))
                await sandbox.ping()
                if i >= 3:
                    samples.append(time.perf_counter() - t0)
        finally:
            await pool.aclose()
        label = "new session, prewarmed (adopt)" if prewarm else "new session, started on demand"
        rows.append((f"{backend} pool", label, samples))
    return rows


async def bench_raw(cold_n: int) -> list[tuple]:
    """The floor: spawning a process at all (`/bin/true` via asyncio)."""

    async def spawn() -> None:
        proc = await asyncio.create_subprocess_exec("/bin/true", stdout=subprocess.DEVNULL)
        await proc.wait()

    return [("subprocess", "spawn `/bin/true` (floor)", await timed(spawn, cold_n))]


async def main(args: argparse.Namespace) -> list[tuple]:
    report = check_isolation()
    gvisor = check_gvisor()
    print(f"isolation: {report.detail}; {gvisor.detail}; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    root = Path(tempfile.mkdtemp(prefix="corral-bench-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    os.chmod(root, 0o711)
    rows = await bench_raw(args.cold)
    try:
        rows += await bench_backend("unsafe", UnsafeSandbox.start, root, args.cold, args.warm)
        if report.ok:
            rows += await bench_backend("bwrap", BwrapSandbox.start, root, args.cold, args.warm)
            rows += await bench_pool(root, args.cold)
        if gvisor.ok:
            rows += await bench_backend("gvisor", GvisorSandbox.start, root, args.cold, args.warm)
            rows += await bench_pool(root, args.cold, "gvisor")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def first_event_rows(sessions: int) -> list[tuple]:
    """Lazy vs eager provisioning, per isolating backend, with an instant and a slower model."""
    from _first_event import measure

    root = Path(tempfile.mkdtemp(prefix="corral-bench-first-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    os.chmod(root, 0o711)
    rows: list[tuple] = []
    try:
        backends = [b for b, ok in (("bwrap", check_isolation().ok), ("gvisor", check_gvisor().ok)) if ok]
        for model_delay in (0.0, 0.1):
            for backend in backends:
                for mode in ("lazy", "eager"):
                    rows += measure(backend, mode, sessions, model_delay, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def print_rows(rows: list[tuple], width: int = 31) -> None:
    head = max([11, *(len(r[0]) for r in rows)])
    print(f"\n{'backend':<{head}} {'operation':<{width}} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for backend, op, samples in rows:
        print(
            f"{backend:<{head}} {op:<{width}} {len(samples):>5} {pct(samples, 0.5):>8.2f} "
            f"{pct(samples, 0.95):>8.2f} {statistics.fmean(samples) * 1000:>8.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (10 cold, 100 warm, 8 sessions)")
    parser.add_argument("--cold", type=int, default=None, help="cold starts per backend (default 30)")
    parser.add_argument("--warm", type=int, default=None, help="warm calls per operation (default 300)")
    parser.add_argument("--sessions", type=int, default=None, help="sessions per first-event row (default 20)")
    args = parser.parse_args()
    args.cold = args.cold or (10 if args.quick else 30)
    args.warm = args.warm or (100 if args.quick else 300)
    args.sessions = args.sessions or (8 if args.quick else 20)
    print_rows(asyncio.run(main(args)))
    print_rows(first_event_rows(args.sessions), width=18)
