"""Per-sandbox cgroups (v1 or v2), used when the server may write the cgroup tree (typically as root).

rlimits cap single processes; a cgroup caps the *whole* sandbox (memory incl. tmpfs, number of tasks, CPU
share). Layouts differ: this project's CI VM is a v1/v2 hybrid whose v2 tree has no controllers, most
laptops are v2-only, so `detect()` looks for v1 controller directories first and falls back to a v2
`cgroup.controllers` listing memory and pids.

Three ways in, all before anything of the sandbox runs: bubblewrap's launch moves the outer bwrap and its
sandbox child in from the host (`add`) while bwrap sets up, which it does held at `--block-fd`
(`local.LaunchGate`); gVisor's runsc starts behind a `/bin/sh` that writes "0" to each `cgroup.procs`
(`join_prefix`); the `preexec_fn` fallback writes "0" to fds the parent opened as root (`open_join_fds`:
the kernel checks the credentials of whoever *opened* the file, so an unprivileged child may join this
way and no other).

A move waits for an RCU grace period unless another move happened just before (~7-10 ms on this
project's VM after a quiet spell, ~0.4 ms back to back), whoever writes and however. The kernel's
`favordynmods` option avoids it; only a cgroup v2 mount takes it, and on this project's v1/v2 hybrid VM,
set on the v2 mount, it also ended the wait of v1 moves, for the rest of the boot (docs/benchmarks.md).
That wait is why bubblewrap's launch moves its processes in from the host, overlapping bwrap's own
set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import shlex
import signal
import time
import uuid
from pathlib import Path

from corral.sandbox.limits import SandboxLimits

__all__ = ["Cgroup", "detect", "sweep_leftovers"]

log = logging.getLogger(__name__)
ROOT = Path("/sys/fs/cgroup")
PARENT = "corral"
V1_CONTROLLERS = ("memory", "pids", "cpu")
LEFTOVER_AGE = 300.0
"""Seconds after which an empty sandbox cgroup is a leftover: a sandbox is in its cgroup seconds after
the cgroup is made (or its start has failed)."""


def detect() -> str | None:
    """'v1', 'v2' or None (no usable, writable cgroup hierarchy)."""
    if all(os.access(ROOT / c, os.W_OK) for c in ("memory", "pids")):
        return "v1"
    controllers = ROOT / "cgroup.controllers"
    try:
        available = controllers.read_text().split()
    except OSError:
        return None
    if {"memory", "pids"} <= set(available) and os.access(ROOT, os.W_OK):
        return "v2"
    return None


class Cgroup:
    """One sandbox's cgroup directories (one per controller on v1, a single one on v2).

    Every instance caps memory and pids (`detect()` requires both); cpu only when `cpu_cores` is set.
    """

    def __init__(self, version: str, dirs: list[Path]) -> None:
        self.version = version
        self.dirs = dirs
        self._fds: list[int] = []

    @classmethod
    def create(cls, limits: SandboxLimits, name: str | None = None) -> Cgroup | None:
        """Make and configure a cgroup, or return None when that is not possible here (logged). The first
        call of a process also removes what earlier, killed servers left behind (`sweep_leftovers`)."""
        version = detect()
        if version is None:
            return None
        _sweep_once(version)
        name = name or f"sbx-{uuid.uuid4().hex[:12]}"
        try:
            if version == "v1":
                return cls._create_v1(limits, name)
            return cls._create_v2(limits, name)
        except OSError as e:
            log.warning("cgroup %s setup failed, running with rlimits only: %s", version, e)
            return None

    @classmethod
    def _create_v1(cls, limits: SandboxLimits, name: str) -> Cgroup:
        group = cls("v1", [])
        try:
            for ctrl in V1_CONTROLLERS:
                if ctrl == "cpu" and (limits.cpu_cores is None or not os.access(ROOT / ctrl, os.W_OK)):
                    continue
                d = ROOT / ctrl / PARENT / name
                d.mkdir(parents=True)
                group.dirs.append(d)
                if ctrl == "memory":
                    _write(d / "memory.limit_in_bytes", limits.memory_bytes)
                    if (d / "memory.memsw.limit_in_bytes").exists():
                        _write(d / "memory.memsw.limit_in_bytes", limits.memory_bytes)
                elif ctrl == "pids":
                    _write(d / "pids.max", limits.pids)
                elif limits.cpu_cores is not None:
                    _write(d / "cpu.cfs_period_us", 100_000)
                    _write(d / "cpu.cfs_quota_us", int(limits.cpu_cores * 100_000))
        except OSError:
            group._rmdir_now()
            raise
        return group

    @classmethod
    def _create_v2(cls, limits: SandboxLimits, name: str) -> Cgroup:
        parent = ROOT / PARENT
        parent.mkdir(exist_ok=True)
        wanted = ["memory", "pids"] + (["cpu"] if limits.cpu_cores is not None else [])
        for d in (ROOT, parent):
            enabled = (d / "cgroup.subtree_control").read_text().split()
            missing = [c for c in wanted if c not in enabled]
            if missing:
                _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        d = parent / name
        d.mkdir()
        group = cls("v2", [d])
        try:
            _write(d / "memory.max", limits.memory_bytes)
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", 0)
            _write(d / "pids.max", limits.pids)
            if limits.cpu_cores is not None:
                _write(d / "cpu.max", f"{int(limits.cpu_cores * 100_000)} 100000")
        except OSError:
            group._rmdir_now()
            raise
        return group

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into this cgroup; its later children are born in it."""
        for d in self.dirs:
            _write(d / "cgroup.procs", pid)

    def join_prefix(self) -> list[str]:
        """An argv prefix that runs the rest of the argv inside this cgroup: `/bin/sh`, started with the
        server's credentials, writes "0" to each `cgroup.procs`, then execs the rest, so the program
        is in the cgroup from its first instruction. A prefix rather than a `preexec_fn`: that would make
        CPython's subprocess `fork()` the whole server instead of `vfork()` (see `local.launcher`)."""
        script = "".join(f"printf 0 >{shlex.quote(str(d / 'cgroup.procs'))} && " for d in self.dirs)
        return ["/bin/sh", "-c", script + 'exec "$@"', "sh"]

    def open_join_fds(self) -> list[int]:
        """fds of each `cgroup.procs`, opened by us; the child writes b"0" to each to join."""
        self._fds = [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs]
        return list(self._fds)

    def close_join_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup so far."""
        for d in self.dirs:
            for fname in ("memory.oom_control", "memory.events"):
                try:
                    text = (d / fname).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(found)

    async def remove(self) -> None:
        """Kill stragglers and rmdir, retrying while the kernel still reports EBUSY."""
        self.close_join_fds()
        for attempt in range(100):
            busy = False
            for d in list(self.dirs):
                try:
                    d.rmdir()
                    self.dirs.remove(d)
                except FileNotFoundError:
                    self.dirs.remove(d)
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        log.warning("cannot remove cgroup %s: %s", d, e)
                        self.dirs.remove(d)
                    else:
                        busy = True
            if not busy:
                return
            if attempt % 10 == 5:
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.01)
        log.warning("cgroup directories still busy, left behind: %s", self.dirs)

    def _rmdir_now(self) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        self.dirs = []


def sweep_leftovers(version: str, min_age: float = LEFTOVER_AGE) -> int:
    """Remove empty sandbox cgroups made more than `min_age` seconds ago; how many directories went.

    A server killed with SIGKILL never removes its sandboxes' cgroups (the sandboxes themselves end once
    their helper's stdin closes), and neither does one whose sandbox processes outlived `remove()`'s
    retries. Any corral process may sweep: a cgroup in use has processes (the kernel refuses to remove
    it), and one just made for a sandbox that is starting is younger than `min_age`."""
    bases = [ROOT / c / PARENT for c in V1_CONTROLLERS] if version == "v1" else [ROOT / PARENT]
    cutoff = time.time() - min_age
    removed = 0
    for base in bases:
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith("sbx-") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                if entry.stat().st_mtime > cutoff or Path(entry.path, "cgroup.procs").read_text().strip():
                    continue
                os.rmdir(entry.path)
                removed += 1
            except OSError:  # in use after all, or removed by its owner meanwhile
                continue
    return removed


@functools.cache
def _sweep_once(version: str) -> None:
    removed = sweep_leftovers(version)
    if removed:
        log.info("removed %d cgroup directories left behind by earlier sandboxes", removed)


def _write(path: Path, value: object) -> None:
    with open(path, "w") as f:
        f.write(str(value))
