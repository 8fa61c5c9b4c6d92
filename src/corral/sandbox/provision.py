"""What every isolating backend (bubblewrap, gVisor) provisions the same way.

A backend differs in how it builds the isolated process tree; what goes *into* it is shared and lives
here, so both give the same guarantees: the session's workdir prepared (and owned by the sandbox's own
host uid when the server is root), the same generated `/etc` files and read-only host `/etc` subset, an
environment built from scratch without server variables, the stdlib-only tool helper and its command
line (output cap, timeouts), the sandbox's own socket on the egress proxy, and the session's binds
(`mounts.session_mounts`: workspace, /mnt tree, outputs, recipe template, file resources).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import marshal
import os
import subprocess
import zlib
from pathlib import Path

from corral.sandbox.base import Mount, SandboxSpec, SandboxUnavailable
from corral.sandbox.channel import HELPER_PATH
from corral.sandbox.credentials import PLACEHOLDER_PREFIX
from corral.sandbox.egress import FORWARDER_PORT, SANDBOX_PROXY_SOCKET, EgressListener, EgressPolicy, EgressProxy
from corral.sandbox.egress import proxy_env as _proxy_env
from corral.sandbox.limits import SandboxLimits
from corral.sandbox.mounts import DEFAULT_PATH, WORKSPACE, home_of, prepare_tree, session_mounts
from corral.sandbox.tls import SYSTEM_CA_BUNDLES

__all__ = [
    "CA_ENV",
    "DEFAULT_PYTHON",
    "ETC_FILES",
    "GENERATED",
    "HELPER_FILES",
    "SANDBOX_CA",
    "SANDBOX_CA_BUNDLE",
    "SANDBOX_UID",
    "UID_BASE",
    "UID_COUNT",
    "WORKSPACE",
    "Provisioned",
    "ca_files",
    "default_host_uid",
    "generated_files",
    "helper_code",
    "helper_command",
    "helper_sources",
    "open_egress",
    "prepare_mounts",
    "prepare_workdir",
    "provision",
    "require_python",
    "resolved_mounts",
    "sandbox_env",
    "trusted_files",
]

log = logging.getLogger(__name__)

SANDBOX_UID = 1000
UID_BASE = 200_000
UID_COUNT = 100_000
DEFAULT_PYTHON = "/usr/bin/python3"
HELPER_DIR = "/sbx"
HELPER_FILES = ("helper.py", "helper_files.py", "helper_net.py")
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
"""Host `/etc` entries bound read-only into every sandbox (when they exist); nothing else of `/etc`."""
SCRUBBED_PREFIXES = ("ANTHROPIC_", "CORRAL_")
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


def generated_files(uid: int = SANDBOX_UID) -> dict[str, bytes]:
    """The `/etc` files written for the sandbox (not the host's): user `agent` has uid `uid`."""
    return {
        "/etc/passwd": b"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        + f"agent:x:{uid}:{uid}:agent:{WORKSPACE}:/bin/bash\n".encode()
        + b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "/etc/group": f"root:x:0:\nagent:x:{uid}:\nnogroup:x:65534:\n".encode(),
        "/etc/hosts": b"127.0.0.1\tlocalhost\n127.0.1.1\tsbx\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "/etc/hostname": b"sbx\n",
    }


GENERATED = generated_files()


def default_host_uid(session_id: str) -> int:
    """A stable uid for callers without a pool (the pool hands out unique ones instead)."""
    return UID_BASE + zlib.crc32(session_id.encode()) % UID_COUNT


def ca_files(bundle: bytes, ca: bytes) -> dict[str, bytes]:
    """The files that make a sandbox trust the egress CA: its own paths, and over the system bundle."""
    files = {SANDBOX_CA: ca, SANDBOX_CA_BUNDLE: bundle}
    for path in SYSTEM_CA_BUNDLES:
        if path.startswith("/etc/ssl/") and os.path.isfile(path):
            files[path] = bundle
    return files


async def trusted_files(egress: EgressProxy | None) -> dict[str, bytes]:
    """`ca_files` of the proxy's CA (none when the proxy does not intercept TLS)."""
    if egress is None or egress.ca is None:
        return {}
    ca = egress.ca
    return ca_files(*await asyncio.to_thread(lambda: (ca.bundle_pem(), ca.certificate_pem)))


def sandbox_env(spec: SandboxSpec, *, proxy: bool = False, ca: bool = False) -> dict[str, str]:
    """The sandbox's whole environment: fixed basics, proxy variables, then `spec.env` minus server keys."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": WORKSPACE,
        "USER": "agent",
        "LOGNAME": "agent",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    if proxy:
        env.update(_proxy_env(FORWARDER_PORT))
    if ca:
        env.update(CA_ENV)
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key + value:
            continue
        if key.startswith(SCRUBBED_PREFIXES) and not value.startswith(PLACEHOLDER_PREFIX):
            continue  # a server variable never; a credential's placeholder under any name
        env[key] = value
    return env


def require_python(python: str) -> None:
    """The helper runs on the image's own python3; say how to get it when it is missing."""
    if not os.access(python, os.X_OK):
        raise SandboxUnavailable(
            f"{python} not found: the sandbox runs its tool helper with the "
            "image's own python3 (apt-get install python3-minimal)"
        )


def helper_sources() -> dict[str, bytes]:
    """`/sbx/<name>` -> source of the helper modules copied into each sandbox."""
    here = Path(HELPER_PATH).parent
    return {f"{HELPER_DIR}/{name}": (here / name).read_bytes() for name in HELPER_FILES}


_COMPILE = """
import importlib.util, marshal, sys
out = {}
for name, source in marshal.loads(sys.stdin.buffer.read()).items():
    code = compile(source, name, "exec", dont_inherit=True)
    out[name[:-3] + ".pyc"] = importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)
sys.stdout.buffer.write(marshal.dumps(out))
"""
_compiled: dict[tuple[object, ...], dict[str, bytes]] = {}


async def helper_code(python: str) -> dict[str, bytes]:
    """The helper modules as bytecode (`/sbx/<name>.pyc`) compiled by `python` itself, else their sources.

    Compiling helper.py and helper_files.py costs ~7.5 ms of every sandbox start here (the sandbox cannot
    cache bytecode: /sbx is read-only), so it is done once per process and interpreter, with the image's
    own python (its bytecode format may differ from the server's), on the host: the sandboxes bind the
    host's /usr. `helper.py` loads its siblings from either form."""
    sources = helper_sources()
    try:
        st = os.stat(python)
    except OSError:
        return sources
    key = (python, st.st_ino, st.st_mtime_ns, hashlib.sha256(marshal.dumps(sources)).digest())
    if key not in _compiled:
        _compiled[key] = await asyncio.to_thread(_compile, python, sources)
    return _compiled[key] or sources


def _compile(python: str, sources: dict[str, bytes]) -> dict[str, bytes]:
    """`sources` compiled by `python` (empty when that fails: the sandbox then compiles them itself)."""
    try:
        result = subprocess.run(
            [python, "-I", "-S", "-c", _COMPILE],
            input=marshal.dumps(sources),
            capture_output=True,
            timeout=30,
            check=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        code = marshal.loads(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError, EOFError, TypeError) as e:
        log.warning("could not precompile the sandbox helper with %s (sandboxes compile it): %s", python, e)
        return {}
    if not isinstance(code, dict) or set(code) != {name[:-3] + ".pyc" for name in sources}:
        return {}
    return code


def helper_command(
    python: str, limits: SandboxLimits, *, proxy: bool, files: dict[str, bytes] | None = None
) -> list[str]:
    """The helper's command line inside the sandbox (the forwarder only when there is a proxy socket);
    `files` as `helper_code` gave them (the bytecode when it has it, else the source)."""
    entry = f"{HELPER_DIR}/helper.pyc" if files and f"{HELPER_DIR}/helper.pyc" in files else f"{HELPER_DIR}/helper.py"
    command = [python, "-I", "-S", entry, "--workdir", WORKSPACE]
    command += ["--output-limit", str(limits.output_bytes), "--timeout", str(limits.call_timeout)]
    if proxy:
        command += ["--proxy-socket", SANDBOX_PROXY_SOCKET, "--proxy-port", str(FORWARDER_PORT)]
    return command


async def open_egress(egress: EgressProxy | None, spec: SandboxSpec, uid: int | None) -> EgressListener | None:
    """The sandbox's own socket on `egress` with `spec`'s policy (None without a proxy: no way out)."""
    if egress is None:
        return None
    policy = EgressPolicy.from_networking(spec.networking, spec.mcp_server_urls)
    try:
        return await egress.open(spec.session_id, policy, uid=uid, broker=spec.credentials)
    except OSError as e:
        raise SandboxUnavailable(f"could not open the sandbox's egress proxy socket: {e}") from e


def prepare_workdir(workdir: str, uid: int | None) -> None:
    """Create the workdir; when sandboxes get their own uid, hand it (recursively) to `uid`.

    The sandbox runtime runs as (or for) `uid` and resolves the bind source itself, so every ancestor must
    be searchable by "other" (x bit); we say so instead of letting it fail with a bare "Permission denied".
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


def resolved_mounts(spec: SandboxSpec) -> list[Mount]:
    """`session_mounts(spec)` with host paths resolved: the sandbox runtime must not follow a symlink."""
    return [dataclasses.replace(m, host=os.path.realpath(m.host)) for m in session_mounts(spec)]


def prepare_mounts(spec: SandboxSpec, mounts: list[Mount], uid: int | None) -> None:
    """The session's /mnt tree, and every read-write bind handed to `uid` (see `prepare_workdir`)."""
    prepare_tree(home_of(spec))
    for mount in mounts:
        if not mount.readonly:
            prepare_workdir(mount.host, uid)


@dataclasses.dataclass
class Provisioned:
    """What a backend's `start` has prepared before it builds its process tree."""

    limits: SandboxLimits
    uid: int | None
    """The sandbox's own host uid (None when the server is not root: no switch)."""
    mounts: list[Mount]
    listener: EgressListener | None
    """The sandbox's socket on the egress proxy (None: no way out at all)."""


async def provision(
    spec: SandboxSpec, limits: SandboxLimits | None, host_uid: int | None, python: str, egress: EgressProxy | None
) -> Provisioned:
    """The steps every backend takes first: check the helper's python, pick the host uid, prepare the
    session's binds, open its egress socket. The caller closes `listener` if its own start fails."""
    if not spec.workdir:
        raise ValueError("SandboxSpec.workdir is required (SandboxPool fills it in)")
    require_python(python)
    root = os.geteuid() == 0
    uid = (host_uid if host_uid is not None else default_host_uid(spec.session_id)) if root else None
    mounts = resolved_mounts(spec)
    await asyncio.to_thread(prepare_mounts, spec, mounts, uid)
    listener = await open_egress(egress, spec, uid)
    return Provisioned(limits or SandboxLimits(), uid, mounts, listener)
