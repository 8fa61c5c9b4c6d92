"""Bubblewrap backend (the default): one long-lived bwrap sandbox per session, running `helper.py`.

Inside: own user/mount/pid/net/ipc/uts/cgroup namespaces, uid 1000 ("agent") with no capabilities and no
way to make further user namespaces; read-only /usr and a handful of /etc files; generated passwd/group/
hosts; a size-capped tmpfs /tmp; the session's host workdir bound at /workspace (also $HOME and the cwd);
an environment built from scratch (`--clearenv`), so no server variable such as ANTHROPIC_API_KEY or
CORRAL_API_KEY can reach it. Measurements and pitfalls: /work/shared/sandbox-notes.md.

When the server runs as root, each sandbox runs under its own unprivileged host uid (the pool hands them
out from 200000 up) and its workdir is chowned to it: that makes RLIMIT_NPROC effective and keeps files
written by one sandbox unreadable by another. rlimits always apply; a per-sandbox cgroup (v1 or v2) caps
memory/pids/cpu when the cgroup tree is writable.

Networking: every sandbox keeps `--unshare-net` (its own loopback, nothing else). With an `EgressProxy`
(the pool passes its own unless built with `egress=False`), the sandbox gets its own Unix socket of that
host-side proxy bound read-only at /run/corral/proxy.sock, the helper's forwarder thread listening on
127.0.0.1:3128, and HTTP(S)_PROXY/http(s)_proxy/NO_PROXY pointing there; the proxy applies
`spec.networking` (`unrestricted`, or `limited`: allowed_hosts, package registries, MCP servers) and never
reaches host-local addresses. See `egress.py`. When the proxy has a CA (`tls.py`), the sandbox trusts it
(`ca_files`, `CA_ENV`), so the proxy can terminate TLS for hosts the session has credentials for. Per
sandbox this costs one socket bind on the host and ~0.3 ms in the helper.

Binds beyond the system files come from `mounts.session_mounts(spec)` (workspace, /mnt tree, outputs,
the recipe template, file resources): the same list any backend binds. Not done yet: a seccomp filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from corral.sandbox import cgroups
from corral.sandbox.base import Mount, SandboxSpec, SandboxUnavailable
from corral.sandbox.channel import HelperSandbox, launch
from corral.sandbox.egress import SANDBOX_PROXY_SOCKET, EgressListener, EgressProxy
from corral.sandbox.limits import SandboxLimits, apply_rlimits, rlimit_plan
from corral.sandbox.provision import (  # shared with the gVisor backend; re-exported for callers
    DEFAULT_PYTHON,
    ETC_FILES,
    GENERATED,
    SANDBOX_UID,
    UID_BASE,
    UID_COUNT,
    WORKSPACE,
    default_host_uid,
    helper_code,
    helper_command,
    prepare_workdir,
    provision,
    sandbox_env,
    trusted_files,
)

__all__ = [
    "UID_BASE",
    "UID_COUNT",
    "BwrapSandbox",
    "IsolationReport",
    "check_isolation",
    "default_host_uid",
    "prepare_workdir",
    "sandbox_env",
]


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (or dnf/pacman), "
            "or choose `--sandbox unsafe-no-isolation` to run tools without any isolation"
        )
    return path


def bwrap_argv(
    bwrap: str,
    limits: SandboxLimits,
    env: dict[str, str],
    mounts: list[Mount],
    files: dict[str, int],
    command: list[str],
    *,
    sockets: dict[str, str] | None = None,
    gate: LaunchGate | None = None,
) -> list[str]:
    """The command from the notes' "working bwrap command"; `mounts` are the session's binds
    (`mounts.session_mounts`; none: an empty /workspace), `files` maps sandbox paths to data fds,
    `sockets` sandbox paths to host Unix sockets (bound read-only: connecting still works), and `gate`
    holds the command until the host lets it go."""
    argv = [
        bwrap,
        *(gate.options() if gate else []),
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sbx",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "lib", "lib32", "lib64", "sbin"):
        if os.path.isdir(f"/usr/{name}"):
            argv += ["--symlink", f"usr/{name}", f"/{name}"]
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for dest, fd in files.items():
        argv += ["--ro-bind-data", str(fd), dest]
    for dest, src in (sockets or {}).items():
        argv += ["--ro-bind", src, dest]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for tmp in ("/tmp", "/dev/shm"):  # capped tmpfs; the root tmpfs itself is made read-only below
        argv += ["--size", str(limits.tmp_bytes), "--tmpfs", tmp]
    for mount in mounts:
        argv += ["--ro-bind" if mount.readonly else "--bind", mount.host, mount.target]
    if not mounts:
        argv += ["--dir", WORKSPACE]
    argv += ["--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *command]


PRLIMIT_OPTIONS = {
    resource.RLIMIT_AS: "--as",
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NOFILE: "--nofile",
    resource.RLIMIT_CORE: "--core",
    resource.RLIMIT_NPROC: "--nproc",
}


@functools.cache
def _launch_tools() -> tuple[str, str] | None:
    """util-linux's `prlimit` and `setpriv`, if both are installed."""
    prlimit, setpriv = shutil.which("prlimit"), shutil.which("setpriv")
    return (prlimit, setpriv) if prlimit and setpriv else None


def launcher(plan: list[tuple[int, int]], uid: int | None) -> list[str] | None:
    """The commands that put bwrap under its rlimits and its own uid, ahead of its argv: `prlimit`
    sets the rlimits, then `setpriv` switches to the sandbox's uid with no supplementary groups.

    Why not `preexec_fn` (and `user=`): either makes CPython's subprocess `fork()` the whole server
    instead of `vfork()`, which costs ~3 ms in a small process and ~15 ms in a 300 MB one here, and
    leaves every page of the server write-protected, to be faulted back one by one (tens of ms more,
    spread over whatever the server does next). The cgroups are joined from the host meanwhile
    (`LaunchGate`). None (use the preexec) when a tool is missing."""
    tools = _launch_tools()
    if tools is None or any(res not in PRLIMIT_OPTIONS for res, _ in plan):
        return None
    prlimit, setpriv = tools
    argv = [prlimit, *(f"{PRLIMIT_OPTIONS[res]}={value}" for res, value in plan), "--"]
    if uid is not None:
        argv += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return argv


class LaunchGate:
    """bwrap's `--info-fd` and `--block-fd`: bwrap reports the pid of its sandbox child, then that child,
    namespaces and mounts set up, waits before it starts anything of the sandbox until `open()`.

    The host moves the outer bwrap into the sandbox's cgroup right after spawning it and the child once
    reported, then opens the gate: both are in before the helper or anything it runs exists, and every
    later process is born inside. Moving from the host rather than joining in the launch chain (a
    `/bin/sh` writing to `cgroup.procs` before it execs the rest) takes a move's RCU wait (7-10 ms after
    a quiet spell on a stock cgroup v1 host, see `cgroups`) off the start's path, into bwrap's own
    set-up (~6 ms), and saves the shell's exec. What bwrap allocates before the move stays charged to
    the server's memory cgroup: its set-up, not the sandbox's."""

    def __init__(self) -> None:
        self._info_r, self._info_w = os.pipe()
        self._block_r, self._block_w = os.pipe()

    def options(self) -> list[str]:
        return ["--info-fd", str(self._info_w), "--block-fd", str(self._block_r)]

    def child_fds(self) -> list[int]:
        """The ends bwrap inherits (`pass_fds`)."""
        return [self._info_w, self._block_r]

    def spawned(self) -> None:
        """Close our copies of bwrap's ends, so that the info pipe reaches EOF if bwrap dies."""
        for fd in (self._info_w, self._block_r):
            if fd >= 0:
                os.close(fd)
        self._info_w = self._block_r = -1

    def take_info(self) -> int:
        """The info pipe's read end, handed over: whoever takes it closes it (`close()` no longer will)."""
        fd, self._info_r = self._info_r, -1
        return fd

    def open(self) -> None:
        os.write(self._block_w, b"g")
        self.close()

    def close(self) -> None:
        for fd in (self._info_r, self._info_w, self._block_r, self._block_w):
            if fd >= 0:
                os.close(fd)
        self._info_r = self._info_w = self._block_r = self._block_w = -1


def read_child_pid(fd: int, timeout: float) -> int:
    """The host pid of bwrap's sandbox child (pid 1 inside) from its `--info-fd`, once bwrap has cloned
    it. Blocking, for at most `timeout` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        raise SandboxUnavailable("bwrap exited before it started the sandbox") from None


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class BwrapSandbox(HelperSandbox):
    """One session's bubblewrap sandbox. Create with `await BwrapSandbox.start(spec)`."""

    def __init__(
        self,
        spec: SandboxSpec,
        limits: SandboxLimits,
        proc: asyncio.subprocess.Process,
        cgroup: cgroups.Cgroup | None,
        host_uid: int | None,
        egress: EgressListener | None = None,
    ) -> None:
        super().__init__(spec, limits, proc)
        self.cgroup = cgroup
        self.host_uid = host_uid
        self.egress = egress
        """This sandbox's socket on the egress proxy (None: no way out at all)."""

    @classmethod
    async def start(
        cls,
        spec: SandboxSpec,
        limits: SandboxLimits | None = None,
        *,
        host_uid: int | None = None,
        python: str = DEFAULT_PYTHON,
        egress: EgressProxy | None = None,
    ) -> BwrapSandbox:
        """Provision a sandbox and wait for its first ping; `SandboxUnavailable` when that is impossible.

        With `egress`, the sandbox gets a socket on that proxy (policy from `spec.networking`), the
        in-sandbox forwarder on 127.0.0.1:3128 and HTTP(S)_PROXY pointing at it; without, no network."""
        bwrap = find_bwrap()
        ready = await provision(spec, limits, host_uid, python, egress)
        limits, uid, mounts, listener = ready.limits, ready.uid, ready.mounts, ready.listener
        sockets = {SANDBOX_PROXY_SOCKET: listener.path} if listener is not None else {}
        try:
            code = await helper_code(python)
            command = helper_command(python, limits, proxy=listener is not None, files=code)
            trusted = await trusted_files(egress)
            cgroup = await asyncio.to_thread(cgroups.Cgroup.create, limits)
        except BaseException:
            if listener is not None:
                await listener.close()
            raise
        plan = rlimit_plan(limits, memory_cgroup=cgroup is not None, own_uid=uid is not None)
        files: dict[str, int] = {}
        gate: LaunchGate | None = None
        proc: asyncio.subprocess.Process | None = None
        try:
            for dest, data in GENERATED.items():
                files[dest] = _memfd(dest.rsplit("/", 1)[1], data)
            for dest, data in code.items():
                files[dest] = _memfd(dest.rsplit("/", 1)[1], data)
            for dest, data in trusted.items():
                files[dest] = _memfd(dest.rsplit("/", 1)[1], data)
            env = sandbox_env(spec, proxy=listener is not None, ca=bool(trusted))
            prefix = launcher(plan, uid)
            gate = LaunchGate() if prefix is not None and cgroup is not None else None
            argv = bwrap_argv(bwrap, limits, env, mounts, files, command, sockets=sockets, gate=gate)
            if prefix is not None:  # vfork: see `launcher`
                gate_fds = gate.child_fds() if gate else []
                proc = await launch(*prefix, *argv, pass_fds=[*files.values(), *gate_fds])
            else:
                join_fds = cgroup.open_join_fds() if cgroup else []

                def preexec() -> None:  # runs in the child after the uid switch, before exec
                    for fd in join_fds:
                        os.write(fd, b"0")
                    apply_rlimits(plan)

                proc = await launch(
                    *argv,
                    pass_fds=[*files.values()],
                    preexec_fn=preexec,
                    user=uid,  # None when not root: no switch
                    group=uid,
                    extra_groups=[] if uid is not None else None,
                )
        except (OSError, subprocess.SubprocessError) as e:
            if cgroup:
                await cgroup.remove()
            if listener is not None:
                await listener.close()
            raise SandboxUnavailable(f"could not start bwrap: {e}") from e
        finally:
            for fd in files.values():
                os.close(fd)
            if cgroup:
                cgroup.close_join_fds()
            if gate is not None and proc is not None:
                gate.spawned()
            elif gate is not None:
                gate.close()
        sandbox = cls(spec, limits, proc, cgroup, uid, listener)
        try:
            if gate is not None:
                await sandbox._move_in(gate)
            await sandbox.ping(timeout=limits.startup_timeout)
        except Exception as e:
            try:
                await sandbox.close()
            finally:
                if gate is not None:  # only now: a closed gate lets bwrap go on, in or out of the cgroup
                    gate.close()
            raise SandboxUnavailable(
                f"bubblewrap sandbox failed to start ({e}); stderr: {sandbox.stderr_tail() or '-'}. "
                "User namespaces may be blocked (Ubuntu 24.04 AppArmor, Docker's seccomp profile); "
                "see docs, or choose `--sandbox unsafe-no-isolation`."
            ) from e
        return sandbox

    async def _move_in(self, gate: LaunchGate) -> None:
        """Move the outer bwrap and, once reported, its sandbox child into the cgroup, then open the gate."""
        assert self.cgroup is not None
        cgroup, outer, info, timeout = self.cgroup, self._proc.pid, gate.take_info(), self.limits.startup_timeout

        def move() -> None:
            try:
                cgroup.add(outer)  # waits out an RCU grace period while bwrap sets up
                cgroup.add(read_child_pid(info, timeout))  # rides on the same grace period
            finally:
                os.close(info)

        await asyncio.to_thread(move)
        gate.open()

    async def _kill(self) -> None:
        # SIGKILL to the outer bwrap takes the whole pid namespace with it (--die-with-parent on the
        # inner init), including setsid/nohup double-forked children.
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
        await self._proc.wait()

    async def _after_close(self) -> None:
        if self.egress is not None:
            await self.egress.close()
        if self.cgroup is not None:
            await self.cgroup.remove()

    def _death_reason(self, returncode: int | None) -> str:
        reason = super()._death_reason(returncode)
        if self.cgroup is not None and self.cgroup.oom_kills():
            return f"{reason} (out of memory: the {self.limits.memory_bytes >> 20} MiB limit was hit)"
        return reason


@dataclass(frozen=True)
class IsolationReport:
    """What `check_isolation()` found: whether bwrap sandboxes work here, and which extras apply."""

    ok: bool
    detail: str
    cgroups: str | None
    per_sandbox_uid: bool


def check_isolation(*, python: str = DEFAULT_PYTHON, timeout: float = 10.0) -> IsolationReport:
    """Run a throwaway sandbox with the real flags (and the real uid switch) and report. Blocking, ~30 ms."""
    root = os.geteuid() == 0
    version = cgroups.detect()
    try:
        bwrap = find_bwrap()
    except SandboxUnavailable as e:
        return IsolationReport(False, str(e), version, root)
    if not os.access(python, os.X_OK):
        return IsolationReport(False, f"{python} not found (the in-sandbox helper needs it)", version, root)
    files = {dest: _memfd(dest.rsplit("/", 1)[1], data) for dest, data in GENERATED.items()}
    argv = bwrap_argv(
        bwrap,
        SandboxLimits(),
        {"PATH": "/usr/bin:/bin"},
        [],
        files,
        [python, "-I", "-S", "-c", "import os; print(os.getuid())"],
    )
    uid = UID_BASE if root else None
    try:
        result = subprocess.run(
            argv,
            pass_fds=[*files.values()],
            capture_output=True,
            text=True,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            timeout=timeout,
            check=False,
            user=uid,
            group=uid,
            extra_groups=[] if uid is not None else None,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return IsolationReport(False, f"bwrap could not run: {e}", version, root)
    finally:
        for fd in files.values():
            os.close(fd)
    if result.returncode != 0 or result.stdout.strip() != str(SANDBOX_UID):
        return IsolationReport(
            False, f"bwrap failed (status {result.returncode}): {result.stderr.strip()}", version, root
        )
    extras = [
        f"cgroup {version} limits" if version else "no cgroup limits (rlimits only)",
        "one host uid per sandbox" if root else "sandboxes share the server's uid",
    ]
    return IsolationReport(True, "bubblewrap works: " + ", ".join(extras), version, root)
