"""Where an on-demand bubblewrap sandbox start goes, step by step, and A/B runs of two source trees.

Run alone (as root, like a server):

    python bench/bench_cold_start.py [--n 30] [--no-ca] [--ballast MB]
    python bench/bench_cold_start.py --compare OLD/src NEW/src [--rounds 12] [--n 5]

The first form times `SandboxPool.get` for new sessions with no prewarmed sandbox (prewarm=0), with a
CA on the egress proxy as `corral serve` has one, and reports each host-side step (timers wrapped
around the pool's and the backend's own functions) plus, interleaved in the same loop, the in-sandbox
stages measured from outside: `bwrap /bin/true` (bubblewrap's setup), `bwrap python3 -I -S -c pass`
(interpreter start) and the first `bash true` / `read` after the start. `--ballast` grows this process
by that many MB of Python objects first: `fork()` costs more the bigger the parent, as in a real server.

`--compare` runs the first form for each tree in turn, `--rounds` times (alternating, in a random order
each round), so both trees see the same machine: this one's speed drifts by tens of percent within an
hour. It prints p50/p95 of the whole `get()` + first ping per tree, and the first tool calls.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS: dict[str, float] = {}


def _timed(owner: Any, name: str, label: str | None = None) -> None:
    """Wrap `owner.name` so that each call adds its duration to `STEPS[label]` (skipped if it is absent)."""
    fn = getattr(owner, name, None)
    if fn is None:
        return
    key = label or name

    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                STEPS[key] = STEPS.get(key, 0.0) + time.perf_counter() - start

        setattr(owner, name, async_wrapper)
        return

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            STEPS[key] = STEPS.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def instrument() -> None:
    """Timers on the steps of `SandboxPool.get` -> `BwrapSandbox.start` (whatever this tree has)."""
    import corral.sandbox.cgroups as cgroups
    import corral.sandbox.local as local
    import corral.sandbox.pool as pool
    import corral.sandbox.provision as provision

    for name in ("_make_dirs", "_uid_for", "_with_recipe"):
        _timed(pool.SandboxPool, name, f"pool.{name}")
    for name in ("prepare_mounts", "open_egress", "resolved_mounts"):
        _timed(provision, name, f"provision.{name}")
    _timed(local, "provision", "provision (all of the above)")
    _timed(local, "trusted_files", "trusted CA files")
    _timed(local, "helper_sources", "helper sources")
    _timed(local, "helper_code", "helper bytecode")
    _timed(local, "_memfd", "memfds")
    _timed(cgroups.Cgroup, "create", "cgroup create")
    _timed(local, "bwrap_argv", "bwrap argv")
    _timed(asyncio, "create_subprocess_exec", "spawn (returns once bwrap is exec'd)")
    _timed(local.BwrapSandbox, "_move_in", "cgroup move-in (overlaps bwrap set-up)")
    _timed(local.BwrapSandbox, "ping", "first ping (python + helper, bwrap set-up if no gate)")


async def _spawn_stdio(argv: list[str], fds: dict[str, int]) -> float:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, pass_fds=[*fds.values()], cwd="/"
    )
    await proc.wait()
    return time.perf_counter() - start


async def run(n: int, ca: bool, ballast_mb: int) -> dict[str, list[float]]:
    """`n` on-demand starts (after 3 warm-ups); per-sample step times in seconds."""
    from corral.sandbox import local
    from corral.sandbox.base import SandboxSpec
    from corral.sandbox.egress import EgressProxy
    from corral.sandbox.limits import SandboxLimits
    from corral.sandbox.pool import SandboxPool
    from corral.sandbox.tls import CertificateAuthority

    ballast = [str(i) * 4 for i in range(ballast_mb * 6000)]  # ~170 bytes each with the list slot
    instrument()
    root = Path(tempfile.mkdtemp(prefix="corral-bench-cold-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    os.chmod(root, 0o711)
    egress = EgressProxy(ca=CertificateAuthority(root / "ca") if ca else None)
    pool = SandboxPool(root / "pool", "bwrap", prewarm=0, egress=egress)
    bwrap = local.find_bwrap()
    generated = getattr(local, "GENERATED", {})
    samples: dict[str, list[float]] = {}

    async def raw(command: list[str]) -> float:
        files = {dest: local._memfd(dest.rsplit("/", 1)[1], data) for dest, data in generated.items()}
        try:
            argv = local.bwrap_argv(bwrap, SandboxLimits(), {"PATH": "/usr/bin:/bin"}, [], files, command)
            return await _spawn_stdio(argv, files)
        finally:
            for fd in files.values():
                os.close(fd)

    async def start(i: int) -> dict[str, float]:
        STEPS.clear()
        t0 = time.perf_counter()
        sandbox = await pool.get(SandboxSpec(f"s{i}", ""))
        out = {"TOTAL on-demand get() incl. first ping": time.perf_counter() - t0, **STEPS}
        t1 = time.perf_counter()
        await sandbox.execute("bash", {"command": "true"})
        out["then first bash `true`"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        await sandbox.execute("read", {"file_path": "/etc/hostname"})
        out["then first read"] = time.perf_counter() - t2
        await pool.destroy(f"s{i}")
        return out

    probes: dict[str, Callable[[int], Any]] = {
        "start": start,
        "raw: spawn /bin/true": lambda i: _spawn_stdio(["/bin/true"], {}),
        "raw: bwrap /bin/true": lambda i: raw(["/bin/true"]),
        "raw: bwrap python3 -I -S -c pass": lambda i: raw(["/usr/bin/python3", "-I", "-S", "-c", "pass"]),
    }
    try:
        for i in range(n + 3):
            order = list(probes)
            random.shuffle(order)
            for name in order:
                result = await probes[name](i)
                if i < 3:
                    continue
                for key, value in result.items() if isinstance(result, dict) else [(name, result)]:
                    samples.setdefault(key, []).append(value)
    finally:
        await pool.aclose()
        shutil.rmtree(root, ignore_errors=True)
        del ballast
    return samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def print_table(samples: dict[str, list[float]]) -> None:
    print(f"{'step':<52} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for key, values in samples.items():
        print(
            f"{key:<52} {len(values):>4} {pct(values, 0.5):>8.2f} {pct(values, 0.95):>8.2f} "
            f"{statistics.fmean(values) * 1000:>8.2f}"
        )


def compare(trees: list[str], rounds: int, n: int, ca: bool, ballast: int) -> None:
    """Alternate the trees, `rounds` times, each a fresh process with its tree first on sys.path."""
    merged: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    print(f"load at start {os.getloadavg()}")
    for _ in range(rounds):
        for tree in random.sample(trees, len(trees)):
            argv = [sys.executable, __file__, "--n", str(n), "--json", "--ballast", str(ballast)]
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
            out = subprocess.run(
                argv + ([] if ca else ["--no-ca"]), env=env, capture_output=True, text=True, check=True
            )
            for key, values in json.loads(out.stdout).items():
                merged[tree].setdefault(key, []).extend(values)
    print(f"load at end {os.getloadavg()}")
    for tree in trees:
        print(f"\n{tree}")
        print_table(merged[tree])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="on-demand starts (default 30)")
    parser.add_argument("--no-ca", action="store_true", help="egress proxy without a CA (no trusted CA files)")
    parser.add_argument("--ballast", type=int, default=0, help="grow this process by about this many MB first")
    parser.add_argument("--compare", nargs="+", metavar="SRC", help="source trees (each a `src` directory) to A/B")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of --compare (default 12)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.rounds, args.n, not args.no_ca, args.ballast)
    else:
        result = asyncio.run(run(args.n, not args.no_ca, args.ballast))
        if args.json:
            print(json.dumps(result))
        else:
            import corral

            print(f"corral from {os.path.dirname(corral.__file__)}; load {os.getloadavg()}; {os.cpu_count()} CPUs")
            print_table(result)
