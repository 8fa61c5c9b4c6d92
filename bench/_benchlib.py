"""Helpers shared by the benchmarks in this directory: timing loops, percentiles, plain-text tables,
CPU accounting from /proc, the machine description, and throwaway databases.

Importing this module puts the repository root on `sys.path`, so `tests.servers` (ServerThread,
postgres_database) can be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.servers (ServerThread, postgres_database)

MODEL = "claude-sonnet-4-6"


# ---- small helpers ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def fmt(value: Any, digits: int = 0) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(
    title: str, headers: list[str], rows: list[list[Any]], notes: list[str] | None = None, *, align: bool = True
) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        out = []
        for i, v in enumerate(values):
            numeric = align and (v[:1].isdigit() or v[:1] == "-")
            out.append(v.rjust(widths[i]) if numeric and i else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    text = [title, "=" * len(title), line(headers), line(["-" * w for w in widths])]
    text += [line(r) for r in cells]
    text += [f"  * {n}" for n in notes or []]
    return "\n".join(text) + "\n"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Run:
    ops: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    server_cpu_s: float = 0.0  # CPU seconds the server process spent during the run (API runs)
    client_cpu_s: float = 0.0  # CPU seconds this process spent during the run
    machine_cpu_s: float = 0.0  # CPU seconds all processes on the machine spent during the run

    @property
    def other_cpu(self) -> float:
        """Share of one core used by processes other than this benchmark's (other users, PostgreSQL)."""
        return max(0.0, self.machine_cpu_s - self.client_cpu_s - self.server_cpu_s) / self.seconds

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


async def run_for(seconds: float, ops: list[Callable[[], Awaitable[Any]]]) -> Run:
    """Run each op in its own task, back to back, until `seconds` elapse; time every call."""
    run = Run()
    deadline = time.perf_counter() + seconds

    async def loop(op: Callable[[], Awaitable[Any]]) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            try:
                await op()
            except Exception:
                run.errors += 1
                continue
            run.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
            run.ops += 1

    start, own, everyone = time.perf_counter(), time.process_time(), machine_cpu()
    await asyncio.gather(*(loop(op) for op in ops))
    run.seconds = time.perf_counter() - start
    run.client_cpu_s, run.machine_cpu_s = time.process_time() - own, machine_cpu() - everyone
    return run


def machine_cpu() -> float:
    """CPU seconds spent by the whole machine (all cores, not idle/iowait) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


OTHER_NOTE = (
    "other CPU = CPU the rest of the machine used meanwhile (other users' jobs; for PostgreSQL runs also the "
    "database server), as a share of one core: high values mean the numbers above are depressed"
)


# ---- machine ------------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for row in f:
            if row.startswith("model name"):
                model = row.split(":", 1)[1].strip()
                break
    versions = []
    for pkg in ("sqlalchemy", "aiosqlite", "asyncpg", "uvicorn", "fastapi", "httpx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
    loop_impl = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        ["nproc", f"{len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()})"],
        ["CPU", model],
        ["Python", f"{platform.python_version()} ({platform.python_implementation()})"],
        ["SQLite", sqlite3.sqlite_version],
        ["PostgreSQL", postgres_version()],
        ["uvicorn", f"loop {loop_impl}, http {http_impl}"],
        ["packages", ", ".join(versions)],
        ["load avg", f"{load} (at start)"],
    ]
    return table("Machine", ["", ""], rows, align=False)


def postgres_version() -> str:
    from tests.servers import PG_ADMIN_URL

    async def ask() -> str:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(ask())
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh database URL: a SQLite file in a temp dir, or a throwaway PostgreSQL database."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
            yield str(Path(tmp) / "bench.db")
    else:
        from tests.servers import postgres_database

        with postgres_database() as url:
            yield url


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OverTime(Exception):
    """Raised in the main thread when a benchmark runs past its time limit."""


def watchdog(seconds: float, name: str) -> None:
    """Past `seconds`, interrupt the run (context managers still stop servers and drop databases);
    if even that hangs, exit hard 20 s later: loads stop by themselves."""

    def interrupt(_signum: int, _frame: Any) -> None:
        raise OverTime(f"still running after {seconds:.0f}s, giving up")

    def hard_exit() -> None:
        print(f"{name}: cleanup hung, exiting", file=sys.stderr, flush=True)
        os._exit(3)

    signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(int(seconds))
    timer = threading.Timer(seconds + 20, hard_exit)
    timer.daemon = True
    timer.start()
