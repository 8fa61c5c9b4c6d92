"""UnsafeSandbox: same helper and results, no isolation (and these tests prove there is none)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from corral.sandbox.base import SandboxSpec
from corral.sandbox.pool import SandboxPool

from .helpers import err, ok


async def test_unsafe_backend_runs_tools_in_the_host_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret-xyz")
    pool = SandboxPool(tmp_path / "root", "unsafe")
    try:
        sandbox = await pool.get(SandboxSpec("u1", ""))
        workdir = pool.workdir_for("u1")
        assert await ok(sandbox, "bash", {"command": "pwd"}) == str(workdir)
        assert "secret-xyz" not in await ok(sandbox, "bash", {"command": "env"})
        assert await ok(sandbox, "write", {"file_path": "d/f.txt", "content": "hi"}) == "wrote 2 bytes to d/f.txt"
        assert (workdir / "d/f.txt").read_text() == "hi"
        assert (
            await err(sandbox, "bash", {"command": "sleep 5", "timeout_ms": 200})
            == "bash: bash command timed out after 0.2s (shell killed; cwd and env were reset)"
        )
        # no isolation at all: host files are readable by absolute path
        probe = tmp_path / f"host-{uuid.uuid4().hex}"
        probe.write_text("visible")
        assert await ok(sandbox, "read", {"file_path": str(probe)}) == "visible"
    finally:
        await pool.aclose()


async def test_unsafe_close_kills_background_jobs(tmp_path: Path) -> None:
    pool = SandboxPool(tmp_path / "root", "unsafe")
    sandbox = await pool.get(SandboxSpec("u2", ""))
    pid = int(await ok(sandbox, "bash", {"command": "sleep 300 >/dev/null 2>&1 & echo $!"}))
    os.kill(pid, 0)
    await pool.aclose()
    for _ in range(100):
        if not _running(pid):
            break
        time.sleep(0.01)
    else:
        pytest.fail("background job survived close()")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers until whatever init we have reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
