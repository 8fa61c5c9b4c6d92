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

Not done yet: `spec.packages` installation, and a seccomp filter (`--seccomp FD`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from corral.sandbox import cgroups
from corral.sandbox.base import SandboxSpec, SandboxUnavailable
from corral.sandbox.channel import HELPER_PATH, STREAM_LIMIT, HelperSandbox
from corral.sandbox.credentials import PLACEHOLDER_PREFIX
from corral.sandbox.egress import (
    FORWARDER_PORT,
    SANDBOX_PROXY_SOCKET,
    EgressListener,
    EgressPolicy,
    EgressProxy,
    proxy_env,
)
from corral.sandbox.limits import SandboxLimits, apply_rlimits, rlimit_plan
from corral.sandbox.tls import SYSTEM_CA_BUNDLES

__all__ = ["BwrapSandbox", "IsolationReport", "check_isolation", "prepare_workdir"]

WORKSPACE = "/workspace"
SANDBOX_UID = 1000
UID_BASE = 200_000
UID_COUNT = 100_000
DEFAULT_PYTHON = "/usr/bin/python3"
ETC_FILES = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "localtime",
    "nsswitch.conf",
    "protocols",
    "services",
)
SCRUBBED_PREFIXES = ("ANTHROPIC_", "CORRAL_")
GENERATED = {
    "/etc/passwd": b"root:x:0:0:root:/root:/usr/sbin/nologin\n"
    b"agent:x:1000:1000:agent:/workspace:/bin/bash\n"
    b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "/etc/group": b"root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n",
    "/etc/hosts": b"127.0.0.1\tlocalhost\n127.0.1.1\tsbx\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "/etc/hostname": b"sbx\n",
}


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (or dnf/pacman), "
            "or choose `--sandbox unsafe-no-isolation` to run tools without any isolation"
        )
    return path


def default_host_uid(session_id: str) -> int:
    """A stable uid for callers without a pool (the pool hands out unique ones instead)."""
    return UID_BASE + zlib.crc32(session_id.encode()) % UID_COUNT


SANDBOX_CA = "/etc/corral/egress-ca.pem"
"""The egress CA's certificate alone, inside a sandbox."""
SANDBOX_CA_BUNDLE = "/etc/corral/ca-bundle.pem"
"""The host's trust store plus the egress CA, inside a sandbox (also bound over the system bundle)."""
CA_ENV = {
    "SSL_CERT_FILE": SANDBOX_CA_BUNDLE,  # OpenSSL-based clients: Python ssl, Ruby, curl built on OpenSSL
    "REQUESTS_CA_BUNDLE": SANDBOX_CA_BUNDLE,  # requests (else certifi's own bundle)
    "CURL_CA_BUNDLE": SANDBOX_CA_BUNDLE,
    "GIT_SSL_CAINFO": SANDBOX_CA_BUNDLE,
    "PIP_CERT": SANDBOX_CA_BUNDLE,
    "NODE_EXTRA_CA_CERTS": SANDBOX_CA,  # Node keeps its built-in roots and adds these
}
"""Trust settings of common clients, pointed at the sandbox's bundle (see docs/sandbox.md)."""


def ca_files(bundle: bytes, ca: bytes) -> dict[str, bytes]:
    """The files that make a sandbox trust the egress CA: its own paths, and over the system bundle."""
    files = {SANDBOX_CA: ca, SANDBOX_CA_BUNDLE: bundle}
    for path in SYSTEM_CA_BUNDLES:
        if path.startswith("/etc/ssl/") and os.path.isfile(path):
            files[path] = bundle
    return files


def sandbox_env(spec: SandboxSpec, *, proxy: bool = False, ca: bool = False) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": WORKSPACE,
        "USER": "agent",
        "LOGNAME": "agent",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    if proxy:
        env.update(proxy_env(FORWARDER_PORT))
    if ca:
        env.update(CA_ENV)
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key + value:
            continue
        if key.startswith(SCRUBBED_PREFIXES) and not value.startswith(PLACEHOLDER_PREFIX):
            continue  # a server variable never; a credential's placeholder under any name
        env[key] = value
    return env


def bwrap_argv(
    bwrap: str,
    limits: SandboxLimits,
    env: dict[str, str],
    workdir: str | None,
    files: dict[str, int],
    command: list[str],
    *,
    sockets: dict[str, str] | None = None,
) -> list[str]:
    """The command from the notes' "working bwrap command"; `files` maps sandbox paths to data fds and
    `sockets` sandbox paths to host Unix sockets (bound read-only: connecting still works)."""
    argv = [
        bwrap,
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
    argv += ["--bind", workdir, WORKSPACE] if workdir else ["--dir", WORKSPACE]
    argv += ["--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *command]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def prepare_workdir(workdir: str, uid: int | None) -> None:
    """Create the workdir; when sandboxes get their own uid, hand it (recursively) to `uid`.

    bwrap then runs as `uid` and resolves the bind source itself, so every ancestor must be searchable by
    "other" (x bit); we say so instead of letting bwrap fail with a bare "Permission denied".
    """
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    if uid is None:
        return
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise SandboxUnavailable(
                f"{parent} is not searchable by other users (mode {os.stat(parent).st_mode & 0o777:o}); "
                f"sandboxes run as their own uid and cannot reach {workdir}. Put the data directory "
                "somewhere world-searchable (e.g. /var/lib/corral) or chmod o+x the parents."
            )
    if os.lstat(path).st_uid != uid:
        os.lchown(path, uid, uid)
        for root, dirs, files in os.walk(path):  # never follows symlinks the agent may have planted
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, uid)
    os.chmod(path, 0o700)


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
        if not spec.workdir:
            raise ValueError("SandboxSpec.workdir is required (SandboxPool fills it in)")
        limits = limits or SandboxLimits()
        bwrap = find_bwrap()
        if not os.access(python, os.X_OK):
            raise SandboxUnavailable(
                f"{python} not found: the sandbox runs its tool helper with the "
                "image's own python3 (apt-get install python3-minimal)"
            )
        root = os.geteuid() == 0
        uid = (host_uid if host_uid is not None else default_host_uid(spec.session_id)) if root else None
        await asyncio.to_thread(prepare_workdir, spec.workdir, uid)
        command = [python, "-I", "-S", "/sbx/helper.py", "--workdir", WORKSPACE]
        command += ["--output-limit", str(limits.output_bytes), "--timeout", str(limits.call_timeout)]
        listener: EgressListener | None = None
        sockets: dict[str, str] = {}
        if egress is not None:
            policy = EgressPolicy.from_networking(spec.networking, spec.mcp_server_urls)
            try:
                listener = await egress.open(spec.session_id, policy, uid=uid, broker=spec.credentials)
            except OSError as e:
                raise SandboxUnavailable(f"could not open the sandbox's egress proxy socket: {e}") from e
            sockets[SANDBOX_PROXY_SOCKET] = listener.path
            command += ["--proxy-socket", SANDBOX_PROXY_SOCKET, "--proxy-port", str(FORWARDER_PORT)]
        trusted: dict[str, bytes] = {}
        try:
            if egress is not None and egress.ca is not None:
                ca = egress.ca
                trusted = ca_files(*await asyncio.to_thread(lambda: (ca.bundle_pem(), ca.certificate_pem)))
            cgroup = await asyncio.to_thread(cgroups.Cgroup.create, limits)
        except BaseException:
            if listener is not None:
                await listener.close()
            raise
        plan = rlimit_plan(limits, memory_cgroup=cgroup is not None, own_uid=uid is not None)
        files: dict[str, int] = {}
        try:
            for dest, data in GENERATED.items():
                files[dest] = _memfd(dest.rsplit("/", 1)[1], data)
            for name in ("helper.py", "helper_files.py", "helper_net.py"):
                files[f"/sbx/{name}"] = _memfd(name, (Path(HELPER_PATH).parent / name).read_bytes())
            for dest, data in trusted.items():
                files[dest] = _memfd(dest.rsplit("/", 1)[1], data)
            env = sandbox_env(spec, proxy=listener is not None, ca=bool(trusted))
            argv = bwrap_argv(bwrap, limits, env, os.path.realpath(spec.workdir), files, command, sockets=sockets)
            join_fds = cgroup.open_join_fds() if cgroup else []

            def preexec() -> None:  # runs in the child after the uid switch, before exec
                for fd in join_fds:
                    os.write(fd, b"0")
                apply_rlimits(plan)

            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=[*files.values()],
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
                preexec_fn=preexec,
                limit=STREAM_LIMIT,
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
        sandbox = cls(spec, limits, proc, cgroup, uid, listener)
        try:
            await sandbox.ping(timeout=limits.startup_timeout)
        except Exception as e:
            await sandbox.close()
            raise SandboxUnavailable(
                f"bubblewrap sandbox failed to start ({e}); stderr: {sandbox.stderr_tail() or '-'}. "
                "User namespaces may be blocked (Ubuntu 24.04 AppArmor, Docker's seccomp profile); "
                "see docs, or choose `--sandbox unsafe-no-isolation`."
            ) from e
        return sandbox

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
        None,
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
