"""Sandbox lifecycle and the bash tool's session semantics, on real bubblewrap and gVisor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral.sandbox.base import Sandbox, SandboxDied, SandboxSpec, SandboxUnavailable
from corral.sandbox.channel import HELPER_PATH
from corral.sandbox.gvisor import GvisorSandbox, check_gvisor
from corral.sandbox.limits import SandboxLimits
from corral.sandbox.local import BwrapSandbox, check_isolation
from corral.sandbox.pool import SandboxPool
from corral.sandbox.provision import helper_code, helper_command, helper_sources

from .helpers import ISOLATED, err, inside_uid, ok, text


def test_check_isolation_reports_working_bwrap() -> None:
    report = check_isolation()
    assert report.ok, report.detail
    assert report.per_sandbox_uid == (os.geteuid() == 0)


async def test_backends_satisfy_the_sandbox_protocol(sbx: Sandbox) -> None:
    assert isinstance(sbx, Sandbox) and sbx.alive()
    assert sbx.spec.session_id == "shared"


async def test_bash_runs_in_workspace_as_unprivileged_user(sbx: Sandbox) -> None:
    out = await ok(sbx, "bash", {"command": "pwd; id -u; echo $HOME"})
    assert out == f"/workspace\n{inside_uid(sbx)}\n/workspace"


async def test_bash_nonzero_exit_is_error_with_merged_output(sbx: Sandbox) -> None:
    out = await err(
        sbx, "bash", {"command": "echo to-stdout; echo to-stderr >&2; exit_code() { return 3; }; exit_code"}
    )
    assert out == "to-stdout\nto-stderr"


async def test_bash_state_carries_over_and_restart_resets_it(sbx: Sandbox) -> None:
    await ok(sbx, "bash", {"command": "mkdir -p sub/dir && cd sub/dir && export GREETING=hello"})
    assert await ok(sbx, "bash", {"command": 'pwd; echo "$GREETING"'}) == "/workspace/sub/dir\nhello"
    assert await ok(sbx, "bash", {"restart": True}) == "bash session restarted"
    assert await ok(sbx, "bash", {"command": 'pwd; echo "[$GREETING]"'}) == "/workspace\n[]"


async def test_bash_needs_a_command(sbx: Sandbox) -> None:
    assert await err(sbx, "bash", {}) == "bash: command is required"


async def test_bash_stdin_is_dev_null_and_ansi_is_stripped(sbx: Sandbox) -> None:
    assert await ok(sbx, "bash", {"command": "cat; printf '\\033[1;31mred\\033[0m\\n'"}) == "red"


async def test_bash_syntax_error_does_not_wedge_the_shell(sbx: Sandbox) -> None:
    assert "unexpected EOF" in await err(sbx, "bash", {"command": "echo 'unterminated"})
    assert await ok(sbx, "bash", {"command": "{ echo grouped; }"}) == "grouped"


async def test_bash_timeout_kills_the_shell_and_says_so(sbx: Sandbox) -> None:
    await ok(sbx, "bash", {"command": "cd /tmp"})
    start = time.monotonic()
    out = await err(sbx, "bash", {"command": "echo started; sleep 30", "timeout_ms": 500})
    assert time.monotonic() - start < 5
    assert out.startswith("bash: bash command timed out after 0.5s")
    assert out.endswith("started")
    assert await ok(sbx, "bash", {"command": "pwd"}) == "/workspace"  # a fresh shell


async def test_bash_timeout_argument_caps_the_call(sbx: Sandbox) -> None:
    out = await err(sbx, "bash", {"command": "sleep 30"}, timeout=0.3)
    assert out.startswith("bash: bash command timed out after 0.3s")


async def test_bash_exit_ends_the_shell_and_the_next_call_gets_a_new_one(sbx: Sandbox) -> None:
    out = await err(sbx, "bash", {"command": "echo bye; exit 4"})
    assert out.startswith("bye\n") and "status 4" in out
    assert await ok(sbx, "bash", {"command": "echo again"}) == "again"


async def test_bash_output_flood_is_truncated_keeping_the_tail(sbx: Sandbox) -> None:
    out = await ok(sbx, "bash", {"command": "head -c 5242880 /dev/zero | tr '\\0' a; echo; echo THE-END"})
    assert out.startswith("[output truncated]\n")
    assert out.endswith("a\nTHE-END")
    assert len(out.encode()) <= 100 * 1024 + len("[output truncated]\n")


async def test_interrupt_stops_the_running_command(sbx: Sandbox) -> None:
    call = asyncio.create_task(sbx.execute("bash", {"command": "sleep 30"}))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    await sbx.interrupt()
    result = await asyncio.wait_for(call, 5)
    assert time.monotonic() - start < 2
    assert result.is_error and "interrupted" in text(result)
    assert sbx.alive()
    assert await ok(sbx, "bash", {"command": "echo still-here"}) == "still-here"


async def test_interrupt_with_nothing_running_does_not_hit_the_next_call(sbx: Sandbox) -> None:
    await sbx.interrupt()
    assert await ok(sbx, "bash", {"command": "sleep 0.2; echo fine"}) == "fine"


@pytest.mark.parametrize("delay", [0, 0.3], ids=["while-queued", "while-running"])
async def test_cancelled_execute_does_not_leave_the_command_running(sbx: Sandbox, delay: float) -> None:
    call = asyncio.create_task(sbx.execute("bash", {"command": "sleep 30"}))
    await asyncio.sleep(0)  # the request is on its way to the helper
    await asyncio.sleep(delay)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    start = time.monotonic()
    assert await ok(sbx, "bash", {"command": "echo next"}) == "next"
    assert time.monotonic() - start < 3


async def test_pings_are_answered_during_a_long_call(sbx: Sandbox) -> None:
    assert isinstance(sbx, ISOLATED)
    call = asyncio.create_task(sbx.execute("bash", {"command": "sleep 1"}))
    await asyncio.sleep(0.1)
    assert sbx.busy
    assert await sbx.ping(timeout=0.5) < 0.5
    await call


async def test_helper_runs_from_bytecode_made_by_the_sandboxs_python(sbx: Sandbox) -> None:
    """The host compiles the helper once with the image's python; the sandbox gets only the bytecode, and
    the file tools load from it too."""
    listing = await ok(sbx, "bash", {"command": "ls /sbx; tr '\\0' ' ' </proc/$PPID/cmdline"})
    assert listing.splitlines()[:3] == ["helper.pyc", "helper_files.pyc", "helper_net.pyc"], listing
    assert "/sbx/helper.pyc --workdir /workspace" in listing
    assert await ok(sbx, "write", {"file_path": "b.txt", "content": "x\n"})
    assert await ok(sbx, "read", {"file_path": "b.txt"}) == "x\n"


async def test_helper_code_falls_back_to_sources_when_python_cannot_compile(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    code = await helper_code(str(fake))
    assert code == helper_sources()
    assert helper_command(str(fake), SandboxLimits(), proxy=False, files=code)[3] == "/sbx/helper.py"


async def test_shell_gets_only_its_pipes_and_default_signal_handling(sbx: Sandbox) -> None:
    """The shell is spawned without subprocess: still no helper descriptor leaks into it, and SIGPIPE is
    back to its default (Python ignores it), so `yes | head` ends quietly."""
    fds = await ok(sbx, "bash", {"command": "for f in /proc/$$/fd/*; do readlink $f; done; true"})
    targets = fds.splitlines()  # 0-2, and the copies `eval` keeps of its redirected ones
    assert all(t == "/dev/null" or t.startswith("pipe:") for t in targets), fds
    assert len({t for t in targets if t.startswith("pipe:")}) == 2, fds  # its own stdin, stdout+stderr
    assert await ok(sbx, "bash", {"command": "yes | head -2; echo ${PIPESTATUS[0]}"}) == "y\ny\n141"


async def test_non_ascii_and_undecodable_names_travel_both_ways(sbx: Sandbox) -> None:
    """Replies are encoded by the helper's own `_json` codec: non-ASCII text is kept, undecodable bytes
    in names (surrogates) do not break a reply, and a search that returns them comes back too."""
    assert await ok(sbx, "bash", {"command": "echo 'ünï €'; touch $'bad\\xff.txt'"}) == "ünï €"
    assert await ok(sbx, "read", {"file_path": "/etc/hostname"}) == "sbx\n"
    found = await ok(sbx, "glob", {"pattern": "bad*"})
    assert found.startswith("/workspace/bad") and found.endswith(".txt"), found
    await ok(sbx, "bash", {"command": "rm -f bad*"})


@pytest.mark.parametrize(
    "last", [b'{"op": "ping", "id": 1}\n', b'{"op": "call", "id": 1, "name": "bash", "input": {"command": "true"}}\n']
)
def test_the_helper_exits_when_its_host_is_gone_even_with_a_reply_on_the_way(tmp_path: Path, last: bytes) -> None:
    """A server killed with a reply on its way: the reply cannot be written (the reader of stdout is
    gone), and then stdin ends. The helper must exit, from its reader thread (a pong) or its main thread
    (a call's result): left waiting, it would keep the dead server's sandbox alive for good."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-S", HELPER_PATH, "--workdir", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.close()
    proc.stdin.write(last)
    proc.stdin.flush()
    time.sleep(0.3)
    proc.stdin.close()
    try:
        assert proc.wait(timeout=10) is not None
    finally:
        proc.kill()


async def test_unknown_tool_is_an_error_result(sbx: Sandbox) -> None:
    assert await err(sbx, "web_fetch", {"url": "http://example.com"}) == "unknown sandbox tool: web_fetch"


async def test_killed_sandbox_raises_died_and_pool_replaces_it(pool: SandboxPool) -> None:
    spec = SandboxSpec("killed", "")
    first = await pool.get(spec)
    await ok(first, "write", {"file_path": "keep.txt", "content": "survives"})
    assert isinstance(first, ISOLATED)
    call = asyncio.create_task(first.execute("bash", {"command": "sleep 30"}))
    await asyncio.sleep(0.2)
    os.kill(first._proc.pid, signal.SIGKILL)
    with pytest.raises(SandboxDied):
        await asyncio.wait_for(call, 5)
    assert not first.alive()
    with pytest.raises(SandboxDied):
        await first.execute("bash", {"command": "true"})
    second = await pool.get(spec)
    assert second is not first and second.alive()
    assert await ok(second, "read", {"file_path": "keep.txt"}) == "survives"


async def test_sandbox_killed_from_inside_is_reported_dead(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("suicide", ""))
    with pytest.raises(SandboxDied):
        await sandbox.execute("bash", {"command": "kill -9 $PPID; sleep 10"})
    assert not sandbox.alive()
    assert await ok(await pool.get(SandboxSpec("suicide", "")), "bash", {"command": "echo back"}) == "back"


async def test_close_is_idempotent_and_removes_the_cgroup(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("closer", ""))
    assert isinstance(sandbox, ISOLATED)
    dirs = list(sandbox.cgroup.dirs) if sandbox.cgroup else []
    await sandbox.close()
    await sandbox.close()
    assert not sandbox.alive()
    assert not any(d.exists() for d in dirs)
    with pytest.raises(SandboxDied):
        await sandbox.execute("bash", {"command": "true"})


async def test_missing_bwrap_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        await BwrapSandbox.start(SandboxSpec("nobwrap", str(tmp_path / "w")))
    assert not check_isolation().ok


def test_check_gvisor_reports_working_runsc() -> None:
    report = check_gvisor()
    assert report.ok, report.detail


async def test_missing_runsc_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = str(tmp_path / "no-runsc")
    with pytest.raises(SandboxUnavailable, match="CORRAL_SANDBOX_RUNSC"):
        await GvisorSandbox.start(SandboxSpec("norunsc", str(tmp_path / "w")), runsc=missing)
    report = check_gvisor(runsc=missing)
    assert not report.ok and f"{missing} is not an executable" in report.detail


async def test_gvisor_sandbox_leaves_nothing_behind(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("tidy", ""))
    if not isinstance(sandbox, GvisorSandbox):
        assert isinstance(sandbox, BwrapSandbox)
        return
    assert (sandbox.bundle / "config.json").is_file()
    await sandbox.close()
    assert not sandbox.bundle.exists()
    assert sandbox.cgroup is None or not sandbox.cgroup.pids()


@pytest.mark.skipif(os.geteuid() != 0, reason="per-sandbox uids only exist when the server is root")
async def test_unreachable_workdir_is_a_clear_error(tmp_path: Path) -> None:
    # pytest's tmp_path lives under a 0700 directory the sandbox uid cannot traverse
    with pytest.raises(SandboxUnavailable, match="not searchable"):
        await BwrapSandbox.start(SandboxSpec("hidden", str(tmp_path / "workspace")))


ROOTLESS_PROBE = """
import asyncio, sys
from corral.sandbox.base import SandboxSpec
from corral.sandbox.gvisor import GvisorSandbox, check_gvisor

async def main():
    assert check_gvisor().ok
    sandbox = await GvisorSandbox.start(SandboxSpec("rootless", sys.argv[1]))
    try:
        result = await sandbox.execute("bash", {"command": "id -u; echo hi > f; cat /etc/shadow; ls /root"})
        print(result.content[0]["text"])
    finally:
        await sandbox.close()

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged uid for the check")
def test_gvisor_runs_rootless_for_a_server_that_is_not_root(sandbox_root: Path) -> None:
    """A server that is not root gets `runsc --rootless`: the same isolation, files owned by its own uid."""
    home = sandbox_root / "rootless"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    src = Path(__file__).resolve().parents[2] / "src"
    result = subprocess.run(
        ["/usr/bin/python3", "-c", ROOTLESS_PROBE, str(home / "workspace")],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(src), "TMPDIR": str(home), "HOME": str(home)},
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0" and "/etc/shadow: No such file" in result.stdout and "/root" in result.stdout
    assert (home / "workspace" / "f").stat().st_uid == 65534
