"""SandboxToolRunner: the harness-facing ToolRunner over a real bubblewrap or gVisor pool."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from corral.config import Settings
from corral.sandbox.pool import Backend, SandboxPool
from corral.sandbox.runner import SandboxToolRunner
from corral.schemas.sessions import Session

from .helpers import ISOLATED


def session(session_id: str) -> Session:
    return cast(Session, SimpleNamespace(id=session_id))


@pytest.fixture
async def runner(sandbox_root: Path, backend: Backend) -> AsyncIterator[SandboxToolRunner]:
    settings = Settings(data_dir=sandbox_root / f"runner-{backend}", sandbox=backend, sandbox_idle_seconds=1)
    r = SandboxToolRunner.from_settings(settings)
    assert r.pool.backend == backend and not r.unavailable
    yield r
    await r.aclose()


async def test_offers_the_sandbox_tools_and_runs_them(runner: SandboxToolRunner) -> None:
    assert sorted(runner.definitions) == ["bash", "edit", "glob", "grep", "read", "write"]
    assert runner.definitions["bash"]["input_schema"]["type"] == "object"
    result = await runner.run(session("run1"), "bash", {"command": "echo hi > f.txt && cat f.txt"})
    assert result.content == [{"type": "text", "text": "hi"}] and not result.is_error
    assert (runner.pool.workdir_for("run1") / "f.txt").read_text() == "hi\n"


async def test_bad_input_and_foreign_tools_are_error_results(runner: SandboxToolRunner) -> None:
    bad = await runner.run(session("run2"), "read", {"path": "x"})
    assert bad.is_error and bad.content[0]["text"].startswith("read: invalid input:")
    web = await runner.run(session("run2"), "web_fetch", {"url": "https://example.com"})
    assert web.is_error and "not available" in web.content[0]["text"]
    assert runner.pool.current("run2") is None  # nothing was provisioned for them


async def test_dead_sandbox_is_an_error_result_then_replaced(runner: SandboxToolRunner) -> None:
    await runner.run(session("run3"), "write", {"file_path": "kept.txt", "content": "still here"})
    sandbox = runner.pool.current("run3")
    assert isinstance(sandbox, ISOLATED)
    call = asyncio.create_task(runner.run(session("run3"), "bash", {"command": "sleep 30"}))
    await asyncio.sleep(0.2)
    os.kill(sandbox._proc.pid, signal.SIGKILL)
    died = await asyncio.wait_for(call, 5)
    assert died.is_error and "the sandbox died during this call" in died.content[0]["text"]
    again = await runner.run(session("run3"), "read", {"file_path": "kept.txt"})
    assert again.content[0]["text"] == "still here"


async def test_interrupt_reaches_the_running_call(runner: SandboxToolRunner) -> None:
    await runner.interrupt("never-started")  # no sandbox: nothing to do
    call = asyncio.create_task(runner.run(session("run4"), "bash", {"command": "sleep 30"}))
    for _ in range(100):  # the sandbox starts on the first call (~0.5 s under gVisor)
        sandbox = runner.pool.current("run4")
        if sandbox is not None and getattr(sandbox, "busy", False):
            break
        await asyncio.sleep(0.05)
    # An interrupt that lands before the helper has started the command has nothing to stop yet: on a
    # loaded machine that window is wide, so interrupt again until the call ends (well before `sleep 30`).
    for _ in range(20):
        await runner.interrupt("run4")
        done, _ = await asyncio.wait({call}, timeout=0.5)
        if done:
            break
    result = await asyncio.wait_for(call, 5)
    assert result.is_error and "interrupted" in result.content[0]["text"]


async def test_idle_sandboxes_are_reaped_in_the_background(runner: SandboxToolRunner) -> None:
    await runner.run(session("run5"), "bash", {"command": "true"})
    sandbox = runner.pool.current("run5")
    assert sandbox is not None and sandbox.alive()
    await runner.release("run5")
    for _ in range(40):
        if not sandbox.alive():
            break
        await asyncio.sleep(0.1)
    assert not sandbox.alive() and runner.pool.current("run5") is None


async def test_unavailable_isolation_offers_nothing_and_says_why(sandbox_root: Path) -> None:
    r = SandboxToolRunner(SandboxPool(sandbox_root / "none"), unavailable="bwrap: setting up uid map: denied")
    assert r.definitions == {}
    result = await r.run(session("x"), "bash", {"command": "true"})
    assert result.is_error
    assert result.content[0]["text"] == "The bash tool cannot run: bwrap: setting up uid map: denied"
    await r.aclose()


async def test_unsafe_backend_from_settings(tmp_path: Path) -> None:
    r = SandboxToolRunner.from_settings(Settings(data_dir=tmp_path, sandbox="unsafe-no-isolation"))
    try:
        assert r.pool.backend == "unsafe"
        result = await r.run(session("u"), "bash", {"command": "pwd"})
        assert result.content[0]["text"] == str(r.pool.workdir_for("u"))
    finally:
        await r.aclose()
    with pytest.raises(ValueError):
        SandboxToolRunner.from_settings(Settings(data_dir=tmp_path, sandbox="docker"))


async def test_a_data_dir_sandbox_users_cannot_enter_disables_tools_with_the_reason(
    tmp_path: Path, sandbox_root: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands sandboxes their own uids")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    runner = SandboxToolRunner.from_settings(Settings(data_dir=private / "data", sandbox="bwrap"))
    try:
        assert runner.definitions == {}
        result = await runner.run(session("run9"), "bash", {"command": "true"})
        assert result.is_error and "cannot be entered by sandbox users" in result.content[0]["text"]
        assert ", which (mode drwx------) cannot be entered by sandbox users" in result.content[0]["text"]
    finally:
        await runner.aclose()
    private_data = sandbox_root / "data0700"  # reachable parents, the data directory itself closed
    private_data.mkdir(mode=0o700)
    runner = SandboxToolRunner.from_settings(Settings(data_dir=private_data, sandbox="bwrap"))
    try:
        result = await runner.run(session("run9"), "bash", {"command": "true"})
        assert f"the data directory {private_data} (mode drwx------) cannot be entered" in result.content[0]["text"]
    finally:
        await runner.aclose()


async def test_gvisor_without_runsc_disables_tools_with_the_reason(sandbox_root: Path) -> None:
    missing = str(sandbox_root / "no-such-runsc")
    settings = Settings(data_dir=sandbox_root / "no-runsc", sandbox="gvisor", sandbox_runsc=missing)
    assert SandboxToolRunner.describe(settings).startswith(f"tools: disabled: {missing} is not an executable")
    runner = SandboxToolRunner.from_settings(settings)
    try:
        assert runner.definitions == {}
        result = await runner.run(session("run10"), "bash", {"command": "true"})
        assert result.is_error and "scripts/install-runsc" in result.content[0]["text"]
        assert "CORRAL_SANDBOX_RUNSC" in result.content[0]["text"]
    finally:
        await runner.aclose()
    working = Settings(data_dir=sandbox_root / "with-runsc", sandbox="gvisor")
    assert SandboxToolRunner.describe(working).startswith("tools: gVisor (runsc) sandboxes (isolated;")


async def test_eager_provisioning_starts_the_sandbox_when_a_turn_starts(sandbox_root: Path, backend: Backend) -> None:
    lazy = SandboxToolRunner.from_settings(Settings(data_dir=sandbox_root / f"lazy-{backend}", sandbox=backend))
    eager = SandboxToolRunner.from_settings(
        Settings(data_dir=sandbox_root / f"eager-{backend}", sandbox=backend, sandbox_provision="eager")
    )
    try:
        await lazy.prepare(session("prep"))
        await asyncio.sleep(0.2)
        assert lazy.pool.current("prep") is None  # lazy: only a tool call starts one
        await eager.prepare(session("prep"))  # returns before the sandbox is up
        assert eager.pool.current("prep") is None
        await asyncio.gather(*eager._preparing)
        sandbox = eager.pool.current("prep")
        assert sandbox is not None and sandbox.alive()
        result = await eager.run(session("prep"), "bash", {"command": "echo ready"})
        assert result.content[0]["text"] == "ready" and eager.pool.current("prep") is sandbox
    finally:
        await lazy.aclose()
        await eager.aclose()
