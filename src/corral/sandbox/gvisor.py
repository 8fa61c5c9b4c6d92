"""gVisor backend (opt-in, `CORRAL_SANDBOX=gvisor`): the tool helper in a `runsc` sandbox.

Bubblewrap shares the host kernel with the agent: one kernel bug reachable through a system call is an
escape. gVisor puts a user-space kernel (the Sentry) between them: the agent's system calls are served by
the Sentry, which itself runs in an empty user namespace under a tight seccomp filter, and host files are
reached only through the mounts listed in the sandbox's OCI bundle. The cost is ~160 ms per sandbox start,
~5 ms (instead of ~0.5 ms) per process started inside, and ~14 MB of memory per sandbox.

What goes in is the same as for bubblewrap (`provision.py`): the session's workdir at /workspace, owned on
the host by the sandbox's own uid when the server is root; read-only /usr and the same /etc subset plus
generated passwd/group/hosts; capped tmpfs /tmp and /dev/shm; an environment built from scratch; the
helper with its output cap and timeouts; the sandbox's own egress proxy socket at
/run/corral/proxy.sock, which the Sentry may connect to because runsc runs with `--host-uds=open`
(`--network=none` leaves only loopback inside, so that socket is the only way out).

How it runs: `runsc run` on a per-sandbox OCI bundle (never `runsc do`, which overlays the host's /), on
the systrap platform (no /dev/kvm needed), with `--ignore-cgroups` because corral puts the whole runsc
tree (Sentry, gofer) into the sandbox's own cgroup itself, as for bubblewrap. rlimits are applied by the
Sentry to the processes inside (OCI `process.rlimits`); RLIMIT_NPROC counts only this sandbox's
processes, since its kernel is its own. PID 1 inside is `/bin/sh` running the helper (so orphans are
reaped). When the server is root, runsc runs as root (the Sentry drops privileges itself) and the agent's
uid inside is the sandbox's own host uid, named `agent`, so the files it writes are owned by that uid on
the host. A server that is not root runs `runsc --rootless`, and the agent is root of the sandbox's own
user namespace (no capabilities on the host).

Mounts: `oci_config()` builds every bind: the system subset, the helper files, the proxy socket, and the
session's binds (`mounts.session_mounts`, the same list bubblewrap binds).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.sandbox import cgroups
from corral.sandbox.base import Mount, SandboxSpec, SandboxUnavailable
from corral.sandbox.channel import HelperSandbox, launch
from corral.sandbox.egress import SANDBOX_PROXY_SOCKET, EgressListener, EgressProxy
from corral.sandbox.limits import SandboxLimits, rlimit_plan
from corral.sandbox.provision import (
    DEFAULT_PYTHON,
    ETC_FILES,
    WORKSPACE,
    generated_files,
    helper_code,
    helper_command,
    provision,
    sandbox_env,
    trusted_files,
)

__all__ = ["GvisorSandbox", "check_gvisor", "find_runsc", "oci_config", "runsc_flags"]

INSTALL_HINT = (
    "install gVisor's runsc (scripts/install-runsc puts Debian trixie's static build in /usr/local/bin; "
    "or see https://gvisor.dev/docs/user_guide/install/), set CORRAL_SANDBOX_RUNSC to its path, "
    "or choose CORRAL_SANDBOX=bwrap"
)
_RLIMIT_NAMES = {  # the OCI names (resource.RLIMIT_OFILE aliases RLIMIT_NOFILE, which runsc wants)
    getattr(resource, n): n
    for n in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_NPROC")
}


def find_runsc(path: str | None = None) -> str:
    """The runsc binary: `path` if given, else `runsc` on PATH or in /usr/local/bin."""
    found = (
        (path if os.access(path, os.X_OK) else None)
        if path
        else shutil.which("runsc") or shutil.which("runsc", path="/usr/local/bin:/usr/sbin:/usr/bin")
    )
    if found is None:
        where = f"{path} is not an executable" if path else "gVisor (runsc) is not installed"
        raise SandboxUnavailable(f"{where}: {INSTALL_HINT}")
    return found


def runsc_flags(state_dir: str, *, rootless: bool, network: bool) -> list[str]:
    """Global runsc flags: systrap (works without /dev/kvm), no network stack beyond loopback, host Unix
    sockets openable (the egress proxy's), and cgroups left to corral."""
    flags = [f"--root={state_dir}", "--platform=systrap", "--network=none", "--ignore-cgroups"]
    if network:
        flags.append("--host-uds=open")
    if rootless:
        flags.append("--rootless")
    return flags


def host_limits(limits: SandboxLimits) -> SandboxLimits:
    """The limits of the sandbox's host cgroup. Processes inside are capped by the Sentry (RLIMIT_NPROC),
    but on the host every one of them has a systrap stub process, and the Sentry has its own threads: a
    host pids cap equal to the sandbox's would kill the Sentry (Go cannot start a thread) before the
    agent's processes ever hit theirs."""
    return dataclasses.replace(limits, pids=limits.pids * 4 + 256)


def _bind(dest: str, source: str, *, ro: bool = True) -> dict[str, Any]:
    return {"destination": dest, "type": "bind", "source": source, "options": ["rbind", "ro" if ro else "rw"]}


def oci_config(
    *,
    command: list[str],
    env: dict[str, str],
    uid: int,
    limits: SandboxLimits,
    binds: list[Mount],
    files: dict[str, str],
    sockets: dict[str, str] | None = None,
    rlimits: Sequence[tuple[int, int]] = (),
) -> dict[str, Any]:
    """The OCI runtime spec of one sandbox. `binds` are the session's (`provision.resolved_mounts`: the
    workspace first; none: no workspace), `files` maps sandbox paths to host files (bound read-only),
    `sockets` sandbox paths to host Unix sockets; the root is a read-only directory holding only the
    merged-/usr links (`_write_bundle`)."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},  # the Sentry's own devices
        _bind("/usr", "/usr"),
    ]
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            mounts.append(_bind(f"/etc/{name}", f"/etc/{name}"))
    mounts += [_bind(dest, src) for dest, src in files.items()]
    mounts += [_bind(dest, src) for dest, src in (sockets or {}).items()]
    for tmp in ("/tmp", "/dev/shm"):
        options = ["mode=1777", f"size={limits.tmp_bytes}"]  # gVisor ignores nosuid/nodev (nothing to gain)
        mounts.append({"destination": tmp, "type": "tmpfs", "source": "tmpfs", "options": options})
    mounts += [_bind(m.target, m.host, ro=m.readonly) for m in binds]
    return {
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": uid, "gid": uid, "additionalGids": []},
            "args": command,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": WORKSPACE if binds else "/",
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "noNewPrivileges": True,
            "rlimits": [{"type": _RLIMIT_NAMES[r], "hard": v, "soft": v} for r, v in rlimits],
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "sbx",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }


def _write_bundle(bundle: Path, data: dict[str, bytes]) -> dict[str, str]:
    """Lay out the bundle: an empty rootfs and `data` as files; returns sandbox path -> host path."""
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    for name in ("bin", "lib", "lib32", "lib64", "sbin"):  # merged-/usr links, as under bubblewrap
        if os.path.isdir(f"/usr/{name}"):
            (rootfs / name).symlink_to(f"usr/{name}")
    (bundle / "files").mkdir()
    paths = {}
    for i, (dest, content) in enumerate(data.items()):
        host = bundle / "files" / f"{i}-{dest.rsplit('/', 1)[1]}"
        host.write_bytes(content)
        host.chmod(0o444)
        paths[dest] = str(host)
    return paths


class GvisorSandbox(HelperSandbox):
    """One session's gVisor sandbox. Create with `await GvisorSandbox.start(spec)`."""

    def __init__(
        self,
        spec: SandboxSpec,
        limits: SandboxLimits,
        proc: asyncio.subprocess.Process,
        *,
        runsc: list[str],
        container_id: str,
        bundle: Path,
        cgroup: cgroups.Cgroup | None,
        host_uid: int | None,
        egress: EgressListener | None,
    ) -> None:
        super().__init__(spec, limits, proc)
        self._runsc = runsc
        self.container_id = container_id
        self.bundle = bundle
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
        runsc: str | None = None,
    ) -> GvisorSandbox:
        """Provision a sandbox and wait for its first ping; `SandboxUnavailable` when that is impossible."""
        binary = find_runsc(runsc)
        ready = await provision(spec, limits, host_uid, python, egress)
        limits, uid, binds, listener = ready.limits, ready.uid, ready.mounts, ready.listener
        root = os.geteuid() == 0
        bundle = Path(tempfile.mkdtemp(prefix="corral-gvisor-"))
        cgroup: cgroups.Cgroup | None = None
        try:
            cgroup = await asyncio.to_thread(cgroups.Cgroup.create, host_limits(limits))
            inside_uid = uid if uid is not None else 0
            trusted = await trusted_files(egress)
            code = await helper_code(python)
            data = {**generated_files(inside_uid), **code, **trusted}
            # The helper under sh: PID 1 must reap orphans, which the helper does not.
            helper = helper_command(python, limits, proxy=bool(listener), files=code)
            command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *helper]
            # RLIMIT_AS: twice the memory budget. The Sentry holds all of the sandbox's memory, so a cgroup
            # OOM kill takes the whole sandbox, not one process: a per-process cap near the budget makes a
            # hog fail alone. Not the budget itself: V8 (node, npm) reserves more address space than it uses.
            plan = [
                (r, 2 * limits.memory_bytes if r == resource.RLIMIT_AS else v)
                for r, v in rlimit_plan(limits, memory_cgroup=cgroup is not None, own_uid=True)
            ]
            paths = await asyncio.to_thread(_write_bundle, bundle, data)
            config = oci_config(
                command=command,
                env=sandbox_env(spec, proxy=listener is not None, ca=bool(trusted)),
                uid=inside_uid,
                limits=limits,
                binds=binds,
                files=paths,
                sockets={SANDBOX_PROXY_SOCKET: listener.path} if listener else None,
                rlimits=plan,
            )
            (bundle / "config.json").write_text(json.dumps(config))
            container_id = f"corral-{uuid.uuid4().hex[:16]}"
            runsc_argv = [binary, *runsc_flags(str(bundle / "state"), rootless=not root, network=bool(listener))]
            # the whole runsc tree starts in the cgroup (vfork: see `Cgroup.join_prefix`)
            join = cgroup.join_prefix() if cgroup else []
            proc = await launch(*join, *runsc_argv, "run", f"--bundle={bundle}", container_id)
        except BaseException as e:
            if cgroup:
                await cgroup.remove()
            if listener is not None:
                await listener.close()
            await asyncio.to_thread(shutil.rmtree, bundle, True)
            if isinstance(e, (OSError, subprocess.SubprocessError)):
                raise SandboxUnavailable(f"could not start runsc: {e}") from e
            raise
        sandbox = cls(
            spec,
            limits,
            proc,
            runsc=runsc_argv,
            container_id=container_id,
            bundle=bundle,
            cgroup=cgroup,
            host_uid=uid,
            egress=listener,
        )
        try:
            await sandbox.ping(timeout=limits.startup_timeout)
        except Exception as e:
            await sandbox.close()
            raise SandboxUnavailable(
                f"gVisor sandbox failed to start ({e}); stderr: {sandbox.stderr_tail() or '-'}"
            ) from e
        return sandbox

    async def _kill(self) -> None:
        # `runsc run` starts the Sentry and gofer attached (they get SIGKILL when it dies); SIGKILL to every
        # process in the sandbox's cgroup is the backstop. runsc's state lives in the bundle, removed after.
        for pid in [self._proc.pid, *(self.cgroup.pids() if self.cgroup else [])]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        await self._proc.wait()

    async def _after_close(self) -> None:
        if self.egress is not None:
            await self.egress.close()
        if self.cgroup is not None:
            await self.cgroup.remove()
        await asyncio.to_thread(shutil.rmtree, self.bundle, True)

    def _death_reason(self, returncode: int | None) -> str:
        reason = super()._death_reason(returncode)
        if self.cgroup is not None and self.cgroup.oom_kills():
            return f"{reason} (out of memory: the {self.limits.memory_bytes >> 20} MiB limit was hit)"
        return reason


@dataclass(frozen=True)
class GvisorReport:
    """What `check_gvisor()` found: whether gVisor sandboxes work here."""

    ok: bool
    detail: str


def check_gvisor(*, runsc: str | None = None, python: str = DEFAULT_PYTHON, timeout: float = 20.0) -> GvisorReport:
    """Start a throwaway gVisor sandbox with the real flags and report. Blocking, ~0.2 s."""
    try:
        binary = find_runsc(runsc)
    except SandboxUnavailable as e:
        return GvisorReport(False, str(e))
    if not os.access(python, os.X_OK):
        return GvisorReport(False, f"{python} not found (the in-sandbox helper needs it)")
    root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="corral-gvisor-check-") as tmp:
        bundle = Path(tmp)
        uid = 65534 if root else 0
        paths = _write_bundle(bundle, generated_files(uid))
        config = oci_config(
            command=[python, "-I", "-S", "-c", "import os; print(os.getuid())"],
            env={"PATH": "/usr/bin:/bin"},
            uid=uid,
            limits=SandboxLimits(),
            binds=[],
            files=paths,
        )
        (bundle / "config.json").write_text(json.dumps(config))
        argv = [binary, *runsc_flags(str(bundle / "state"), rootless=not root, network=False)]
        argv += ["run", f"--bundle={bundle}", f"corral-check-{uuid.uuid4().hex[:12]}"]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, cwd="/", timeout=timeout, check=False, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.SubprocessError) as e:
            return GvisorReport(False, f"runsc could not run: {e}")
    if result.returncode != 0 or result.stdout.strip() != str(uid):
        tail = (result.stderr.strip() or result.stdout.strip())[-500:]
        return GvisorReport(False, f"runsc failed (status {result.returncode}): {tail}")
    return GvisorReport(True, f"gVisor works ({binary}, systrap platform)")
