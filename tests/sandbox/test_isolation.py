"""Escape attempts against the bubblewrap and gVisor sandboxes. Every one of these must fail on both."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox.base import Sandbox, SandboxSpec
from corral.sandbox.gvisor import GvisorSandbox
from corral.sandbox.local import BwrapSandbox
from corral.sandbox.pool import SandboxPool

from .helpers import ISOLATED, err, ok, text


@pytest.fixture
def host_secret() -> Iterator[tuple[Path, str]]:
    """A secret file on the host, outside any workdir (in /root when we can write there, else /tmp)."""
    token = f"host-secret-{uuid.uuid4().hex}"
    base = Path("/root") if os.access("/root", os.W_OK) else Path("/tmp")
    path = base / f"corral-escape-{uuid.uuid4().hex}.txt"
    path.write_text(token)
    yield path, token
    path.unlink(missing_ok=True)


async def test_etc_shadow_is_not_there(sbx: Sandbox) -> None:
    assert await err(sbx, "read", {"file_path": "/etc/shadow"}) == "read: /etc/shadow: no such file or directory"
    assert "No such file" in await err(sbx, "bash", {"command": "cat /etc/shadow"})
    assert await ok(sbx, "bash", {"command": "ls /etc"}) == "\n".join(
        sorted(
            [
                "alternatives",
                "ca-certificates",
                "group",
                "hostname",
                "hosts",
                "ld.so.cache",
                "ld.so.conf",
                "ld.so.conf.d",
                "localtime",
                "nsswitch.conf",
                "passwd",
                "protocols",
                "services",
                "ssl",
            ]
        )
    )


async def test_host_files_outside_the_workdir_are_invisible(sbx: Sandbox, host_secret: tuple[Path, str]) -> None:
    path, token = host_secret
    assert "no such file or directory" in await err(sbx, "read", {"file_path": str(path)})
    assert token not in text(await sbx.execute("bash", {"command": f"cat {path}; ls /root /home /var"}))
    found = await sbx.execute(
        "bash", {"command": "grep -rl host-secret / --exclude-dir=proc --exclude-dir=usr --exclude-dir=sys 2>/dev/null"}
    )
    assert text(found) == "" and found.is_error  # grep: no match


async def test_planted_symlinks_resolve_inside_the_sandbox(
    sbx: Sandbox, pool: SandboxPool, host_secret: tuple[Path, str]
) -> None:
    path, token = host_secret
    await ok(
        sbx,
        "bash",
        {"command": f"ln -sfn /etc/shadow shadow-link; ln -sfn {path} secret-link; ln -sfn {path.parent} dir-link"},
    )
    assert await err(sbx, "read", {"file_path": "shadow-link"}) == "read: shadow-link: no such file or directory"
    assert token not in text(await sbx.execute("read", {"file_path": "secret-link"}))
    # writing through a link to a host path must not create anything on the host
    target = path.parent / f"corral-planted-{uuid.uuid4().hex}"
    await ok(sbx, "bash", {"command": f"ln -sfn {target} write-link"})
    await sbx.execute("write", {"file_path": "write-link", "content": "pwned"})
    await sbx.execute("write", {"file_path": f"dir-link/{target.name}", "content": "pwned"})
    assert not target.exists()
    # and the server never follows them when it looks at the workdir either
    assert (pool.workdir_for("shared") / "shadow-link").is_symlink()


async def test_server_environment_does_not_leak(pool: SandboxPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret-xyz")
    monkeypatch.setenv("CORRAL_API_KEY", "secret-abc")
    sandbox = await pool.get(SandboxSpec("envcheck", "", env={"ANTHROPIC_BASE_URL": "secret-env", "FOO": "bar"}))
    out = await ok(sandbox, "bash", {"command": "env; cat /proc/1/environ | tr '\\0' '\\n'"})
    for secret in ("secret-xyz", "secret-abc", "secret-env", "ANTHROPIC", "CORRAL_"):
        assert secret not in out
    assert "FOO=bar" in out


async def test_host_loopback_is_unreachable(sbx: Sandbox) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = await err(
            sbx,
            "bash",
            {"command": f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=2)'"},
        )
        assert "Connection refused" in out
    interfaces = await ok(sbx, "bash", {"command": "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"})
    assert interfaces == "lo"


async def test_host_processes_are_invisible(sbx: Sandbox) -> None:
    out = await ok(sbx, "bash", {"command": "ps -eo pid,comm --no-headers"})
    names = [line.split(None, 1)[1] for line in out.splitlines()]
    init = "sh" if isinstance(sbx, GvisorSandbox) else "bwrap"  # what runs as PID 1 and reaps orphans
    assert sorted(names) == sorted(["bash", init, "ps", "python3"]), out
    pids = await ok(sbx, "bash", {"command": "ls /proc | grep -E '^[0-9]+$' | sort -n | tail -1"})
    assert int(pids) < 100
    assert "pytest" not in await ok(sbx, "bash", {"command": "cat /proc/*/cmdline | tr '\\0' ' '"})


async def test_other_sessions_workdirs_are_unreachable(pool: SandboxPool) -> None:
    a = await pool.get(SandboxSpec("tenant-a", ""))
    b = await pool.get(SandboxSpec("tenant-b", ""))
    await ok(a, "write", {"file_path": "private.txt", "content": "a-only"})
    a_host = pool.workdir_for("tenant-a") / "private.txt"
    assert "no such file" in await err(b, "read", {"file_path": str(a_host)})
    assert "no such file" in await err(b, "read", {"file_path": "../tenant-a/workspace/private.txt"})
    assert "a-only" not in text(await b.execute("bash", {"command": f"cat {a_host} ../*/private.txt"}))
    assert isinstance(a, ISOLATED) and isinstance(b, ISOLATED)
    if os.geteuid() == 0:  # and on the host, each workdir belongs to its own uid, mode 0700
        assert a.host_uid != b.host_uid
        stat = pool.workdir_for("tenant-a").stat()
        assert (stat.st_uid, stat.st_mode & 0o777) == (a.host_uid, 0o700)


async def test_no_privileges_inside(sbx: Sandbox) -> None:
    status = await ok(sbx, "bash", {"command": "grep -E '^CapEff' /proc/self/status"})
    assert status.split() == ["CapEff:", "0000000000000000"]
    no_new_privs = "python3 -c 'import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'"  # PR_GET_NO_NEW_PRIVS
    assert await ok(sbx, "bash", {"command": no_new_privs}) == "1"
    denied = await err(sbx, "bash", {"command": "touch /usr/x"})  # gVisor checks permissions first
    assert "Read-only file system" in denied or "Permission denied" in denied
    if isinstance(sbx, GvisorSandbox):
        # User namespaces are the Sentry's own (no host kernel code behind them): "root" in one gains
        # nothing outside the sandbox.
        out = await ok(
            sbx, "bash", {"command": "unshare -U -r sh -c 'id -u; cat /etc/shadow; touch /usr/x' 2>&1; true"}
        )
        assert out.splitlines()[0] == "0" and "No such file" in out and "cannot touch '/usr/x'" in out
    else:
        assert "unshare failed" in await err(sbx, "bash", {"command": "unshare -U true"})  # --disable-userns


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        for task in Path(f"/proc/{parent}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


async def test_every_process_starts_in_its_cgroup_under_its_limits_and_uid(sandbox_root: Path) -> None:
    """bwrap is launched without `preexec_fn` (`local.launcher`): the whole tree, from the outer bwrap
    down, is in the sandbox's cgroups, under its rlimits, as its own uid with no groups, and no
    descriptor of the launch leaks into the sandbox. (bubblewrap's launch only: gVisor has its own.)"""
    pool = SandboxPool(sandbox_root / "launched", "bwrap", egress=False)
    try:
        await _check_launched_tree(await pool.get(SandboxSpec("launched", "")))
    finally:
        await pool.aclose()


async def _check_launched_tree(sandbox: Sandbox) -> None:
    assert isinstance(sandbox, BwrapSandbox) and sandbox.cgroup is not None  # cgroups are writable here and in CI
    await ok(sandbox, "bash", {"command": "sleep 30 & true"})
    tree = _descendants(sandbox._proc.pid)
    assert len(tree) >= 5  # outer bwrap, inner bwrap, helper, shell, sleep
    assert set(tree) <= set(sandbox.cgroup.pids())
    for pid in tree:
        status = Path(f"/proc/{pid}/status").read_text()
        limits = Path(f"/proc/{pid}/limits").read_text()
        if sandbox.host_uid is not None:
            uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
            assert uids == [str(sandbox.host_uid)] * 4, status
            assert next(line for line in status.splitlines() if line.startswith("Groups:")).split() == ["Groups:"]
            nproc = next(line for line in limits.splitlines() if line.startswith("Max processes"))
            assert nproc.split()[2:4] == [str(sandbox.limits.pids)] * 2, limits
        cpu = next(line for line in limits.splitlines() if line.startswith("Max cpu time"))
        assert cpu.split()[3:5] == [str(sandbox.limits.cpu_seconds)] * 2, limits
    fds = await ok(sandbox, "bash", {"command": "for f in /proc/$PPID/fd/*; do readlink $f; done; true"})
    assert "cgroup" not in fds and "memfd" not in fds, fds
    await ok(sandbox, "bash", {"restart": True})


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(["--no-such-option"], id="before-the-clone"),
        pytest.param(["--ro-bind", "/nonexistent-corral-source", "/x"], id="in-the-set-up"),
    ],
)
async def test_a_bwrap_that_fails_while_held_at_the_gate_leaves_nothing_behind(
    sandbox_root: Path, monkeypatch: pytest.MonkeyPatch, broken: list[str]
) -> None:
    """bwrap dying before it reports its child, or after (a mount that fails), while the host is moving
    it into its cgroup (`local.LaunchGate`): a clear error with bwrap's own words, and no cgroup, process
    or descriptor left over."""
    from corral.sandbox import cgroups, local

    real_argv = local.bwrap_argv
    monkeypatch.setattr(
        local,
        "bwrap_argv",
        lambda bwrap, *a, **k: real_argv(bwrap, *a, **k)[:1] + broken + real_argv(bwrap, *a, **k)[1:],
    )
    created: list[cgroups.Cgroup] = []
    real_create = cgroups.Cgroup.create

    def create(*args: object, **kwargs: object) -> cgroups.Cgroup | None:
        group = real_create(*args, **kwargs)  # type: ignore[arg-type]
        created.extend([group] if group else [])
        return group

    monkeypatch.setattr(cgroups.Cgroup, "create", staticmethod(create))
    fds = set(os.listdir("/proc/self/fd"))
    with pytest.raises(local.SandboxUnavailable) as failed:
        await local.BwrapSandbox.start(SandboxSpec("broken", str(sandbox_root / "broken-gate" / "w")))
    assert ("no-such-option" if broken[0] == "--no-such-option" else "nonexistent-corral-source") in str(failed.value)
    assert created and not any(d.exists() for group in created for d in group.dirs)
    assert set(os.listdir("/proc/self/fd")) <= fds


async def test_the_whole_gvisor_tree_starts_in_its_cgroup(sandbox_root: Path) -> None:
    """runsc is launched through `Cgroup.join_prefix` (vfork, no `preexec_fn`): runsc, its gofer and the
    Sentry, everything on the host that serves the sandbox, is in the sandbox's cgroups."""
    pool = SandboxPool(sandbox_root / "gvisor-launched", "gvisor", egress=False)
    try:
        sandbox = await pool.get(SandboxSpec("launched", ""))
        assert isinstance(sandbox, GvisorSandbox) and sandbox.cgroup is not None
        await ok(sandbox, "bash", {"command": "sleep 30 & true"})
        tree = _descendants(sandbox._proc.pid)
        assert len(tree) >= 3, tree  # runsc, gofer, sandbox (Sentry)
        assert set(tree) <= set(sandbox.cgroup.pids())
        await ok(sandbox, "bash", {"restart": True})
    finally:
        await pool.aclose()


async def test_without_util_linux_the_preexec_launch_applies_the_same_limits(
    sandbox_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `prlimit`/`setpriv` on the host: bwrap is forked with a `preexec_fn` instead, same guarantees."""
    from corral.sandbox import local

    monkeypatch.setattr(local, "_launch_tools", lambda: None)
    pool = SandboxPool(sandbox_root / "preexec-launch", "bwrap", egress=False)
    try:
        sandbox = await pool.get(SandboxSpec("preexec", ""))
        assert isinstance(sandbox, local.BwrapSandbox)
        assert await ok(sandbox, "bash", {"command": "ulimit -t"}) == str(sandbox.limits.cpu_seconds)
        if sandbox.cgroup is not None:
            assert set(_descendants(sandbox._proc.pid)) <= set(sandbox.cgroup.pids())
    finally:
        await pool.aclose()


async def test_fork_bomb_is_contained(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("forkbomb", ""))
    assert isinstance(sandbox, ISOLATED)
    start = time.monotonic()
    # the bomb backgrounds itself, so the call may return at once or time out in a fork retry loop
    result = await sandbox.execute("bash", {"command": ":(){ :|:& };:", "timeout_ms": 3000})
    assert not result.is_error or text(result).startswith("bash: bash command timed out after 3s")
    assert time.monotonic() - start < 15
    await asyncio.sleep(1)  # let it hit the ceiling
    assert subprocess.run(["true"], check=False, timeout=5).returncode == 0  # the host can still fork
    if sandbox.host_uid is not None:
        assert _processes_of(sandbox.host_uid) <= sandbox.limits.pids + 5
    assert await ok(sandbox, "bash", {"restart": True}) == "bash session restarted"
    assert await ok(sandbox, "bash", {"command": "/bin/echo survived"}) == "survived"
    if sandbox.host_uid is not None:
        await asyncio.sleep(0.2)
        assert _processes_of(sandbox.host_uid) <= 4  # outer bwrap, inner bwrap, helper, shell


def _processes_of(uid: int) -> int:
    found = subprocess.run(["pgrep", "-c", "-u", str(uid)], capture_output=True, text=True, check=False)
    return int(found.stdout.strip() or 0)


FORK_UNTIL_REFUSED = """
import os, time
started = 0
try:
    for _ in range(400):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        started += 1
except OSError as e:
    print("refused after", started, e.strerror)
"""


async def test_process_count_is_capped(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("nproc", ""))
    out = await ok(sandbox, "bash", {"command": f"python3 -c '{FORK_UNTIL_REFUSED}'"}, timeout=60)
    assert out.startswith("refused after ") and "Resource temporarily unavailable" in out, out
    assert int(out.split()[2]) < sandbox.limits.pids
    await ok(sandbox, "bash", {"restart": True})  # kills the sleepers (the shell's process group)
    assert await ok(sandbox, "bash", {"command": "echo fine"}) == "fine"


async def test_memory_hog_is_killed(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("memhog", ""))
    out = await err(
        sandbox, "bash", {"command": "python3 -c 'b = bytearray(2 * 1024**3); print(\"got\" * 2)'", "timeout_ms": 30000}
    )
    assert "gotgot" not in out
    assert "Killed" in out or "MemoryError" in out
    if sandbox.alive():
        assert await ok(sandbox, "bash", {"command": "echo ok"}) == "ok"
    else:
        assert await ok(await pool.get(SandboxSpec("memhog", "")), "bash", {"command": "echo ok"}) == "ok"


async def test_tmp_is_capped(sbx: Sandbox) -> None:
    out = await err(sbx, "bash", {"command": "head -c 400M /dev/zero > /tmp/fill"})
    assert "No space left on device" in out
    await ok(sbx, "bash", {"command": "rm -f /tmp/fill"})
