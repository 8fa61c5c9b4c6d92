"""Resource limits for one sandbox, and their translation into rlimits.

rlimits are always applied (they need no privilege, but can only be *lowered*: this machine has no
CAP_SYS_RESOURCE). cgroups (see `cgroups.py`) add whole-tree memory/pids/cpu caps when writable.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["SandboxLimits", "apply_rlimits", "rlimit_plan"]

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class SandboxLimits:
    """Per-sandbox caps. Defaults suit one agent session on a small machine."""

    memory_bytes: int = 1 * GiB
    """cgroup memory cap for the whole sandbox; also RLIMIT_AS per process when no cgroup is available."""
    address_space_bytes: int | None = None
    """RLIMIT_AS per process. None: `memory_bytes` without a memory cgroup, 4x that with one (the cgroup is
    the real cap, and runtimes such as node/go reserve far more address space than they touch)."""
    pids: int = 256
    """cgroup pids.max, and RLIMIT_NPROC when the sandbox has its own host uid."""
    cpu_cores: float | None = 1.0
    """cgroup CPU quota in cores (None = unthrottled)."""
    cpu_seconds: int = 3600
    """RLIMIT_CPU per process (kills runaway busy loops even without cgroups)."""
    file_size_bytes: int = 4 * GiB
    """RLIMIT_FSIZE: the largest file a process may write (the workdir is on the host disk)."""
    open_files: int = 4096
    """RLIMIT_NOFILE."""
    tmp_bytes: int = 256 * MiB
    """Size of the tmpfs mounted at /tmp (counts against memory)."""
    call_timeout: float = 120.0
    """Default timeout of one tool call, seconds (bash `timeout_ms` overrides it)."""
    max_call_timeout: float = 3600.0
    """Upper bound on any requested timeout."""
    output_bytes: int = 100 * 1024
    """bash output cap; the tail is kept."""
    startup_timeout: float = 20.0
    """How long provisioning may take before the backend is declared unavailable."""


def rlimit_plan(limits: SandboxLimits, *, memory_cgroup: bool, own_uid: bool) -> list[tuple[int, int]]:
    """The (resource, value) pairs to apply in the child, each already clamped to the current hard limit.

    RLIMIT_NPROC counts every process of the *host* uid, so it is only set when the sandbox has a uid of
    its own; applied to a shared uid it would count the server's processes too.
    """
    address_space = limits.address_space_bytes
    if address_space is None:
        address_space = limits.memory_bytes * (4 if memory_cgroup else 1)
    wanted = [
        (resource.RLIMIT_AS, address_space),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if own_uid:
        wanted.append((resource.RLIMIT_NPROC, limits.pids))
    plan = []
    for res, value in wanted:
        _soft, hard = resource.getrlimit(res)
        plan.append((res, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return plan


def apply_rlimits(plan: list[tuple[int, int]]) -> None:
    """Set soft = hard = value for each entry (safe to call in a `preexec_fn`: no imports, no locks)."""
    for res, value in plan:
        resource.setrlimit(res, (value, value))
