"""`SandboxToolRunner`: the harness's `ToolRunner` (harness/tools.py) on top of a `SandboxPool`.

It validates the model's input against the toolset schemas, routes the six sandbox tools to the
session's sandbox, and turns sandbox failures into error results the model can read, so a dead or
unavailable sandbox never fails the harness step. `runtime.py` builds it from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from corral.sandbox.base import SandboxDied, SandboxSpec, SandboxUnavailable, ToolResult
from corral.sandbox.limits import SandboxLimits
from corral.sandbox.pool import Backend, SandboxPool, check_isolation
from corral.schemas.sessions import Session
from corral.tools.toolset import TOOLS, validate_input

__all__ = ["SandboxToolRunner"]

log = logging.getLogger(__name__)

SANDBOX_TOOL_NAMES = tuple(name for name, tool in TOOLS.items() if tool.in_sandbox)


class SandboxToolRunner:
    """Runs agent-toolset calls in per-session sandboxes; reaps idle ones in the background."""

    def __init__(self, pool: SandboxPool, *, unavailable: str | None = None) -> None:
        self.pool = pool
        self.unavailable = unavailable
        """Why no sandbox can run here (then no tools are offered and every call says why)."""
        names = () if unavailable else SANDBOX_TOOL_NAMES
        self.definitions: dict[str, dict[str, Any]] = {n: TOOLS[n].tool_definition() for n in names}
        self._reaper: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> SandboxToolRunner:
        """From `Settings.data_dir`, `.sandbox` ("bwrap" | "unsafe-no-isolation") and `.sandbox_idle_seconds`."""
        choice = str(settings.sandbox)
        if choice not in ("bwrap", "unsafe-no-isolation"):
            raise ValueError(f"unknown sandbox {choice!r}: use 'bwrap' or 'unsafe-no-isolation'")
        backend: Backend = "unsafe" if choice == "unsafe-no-isolation" else "bwrap"
        root = Path(settings.data_dir).resolve() / "sandboxes"
        pool = SandboxPool(root, backend, limits=SandboxLimits(), idle_seconds=settings.sandbox_idle_seconds)
        if backend == "unsafe":
            log.warning("sandbox: unsafe-no-isolation: agent tools run as this user, unconfined")
            return cls(pool)
        problem = isolation_problem(root)
        if problem:
            log.error("sandbox: agent tools are disabled: %s", problem)
            return cls(pool, unavailable=problem)
        return cls(pool)

    @staticmethod
    def describe(settings: Any) -> str:
        """One line for the operator: where agent tools will run, or why they cannot (runs the check)."""
        if str(settings.sandbox) == "unsafe-no-isolation":
            return "tools: UNSAFE, no isolation (CORRAL_SANDBOX=unsafe-no-isolation): commands run as this user"
        if str(settings.sandbox) != "bwrap":
            return f"tools: disabled, unknown sandbox {settings.sandbox!r}"
        problem = isolation_problem(Path(settings.data_dir).resolve() / "sandboxes")
        return f"tools: disabled: {problem}" if problem else "tools: bubblewrap sandboxes (isolated, no network)"

    async def run(self, session: Session, name: str, tool_input: dict[str, Any]) -> ToolResult:
        if name not in SANDBOX_TOOL_NAMES:
            return ToolResult.text(f"The {name} tool is not available in this deployment.", is_error=True)
        if self.unavailable:
            return ToolResult.text(f"The {name} tool cannot run: {self.unavailable}", is_error=True)
        problem = validate_input(name, tool_input)
        if problem:
            return ToolResult.text(problem, is_error=True)
        self._start_reaper()
        try:
            sandbox = await self.pool.get(SandboxSpec(session.id, ""))
            return await sandbox.execute(name, tool_input)
        except SandboxUnavailable as e:
            log.error("sandbox for %s unavailable: %s", session.id, e)
            return ToolResult.text(f"The {name} tool cannot run: {e}", is_error=True)
        except SandboxDied as e:
            return ToolResult.text(
                f"{name}: the sandbox died during this call ({e}). The next call gets a fresh one; "
                "files in /workspace are kept, running processes and shell state are not.",
                is_error=True,
            )

    async def interrupt(self, session_id: str) -> None:
        sandbox = self.pool.current(session_id)
        if sandbox is not None and sandbox.alive():
            await sandbox.interrupt()

    async def release(self, session_id: str) -> None:
        """The session went idle: nothing to do now; the reaper closes its sandbox after the idle time."""
        return None

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.pool.aclose()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")

    async def _reap_forever(self) -> None:
        period = max(1.0, min(60.0, self.pool.idle_seconds / 4))
        while True:
            await asyncio.sleep(period)
            try:
                closed = await self.pool.release_idle()
            except Exception:
                log.exception("sandbox reaper failed")
                continue
            if closed:
                log.info("closed idle sandboxes: %s", ", ".join(closed))


def isolation_problem(root: Path) -> str | None:
    """Why bubblewrap sandboxes under `root` cannot run here, or None."""
    report = check_isolation()
    if not report.ok:
        return report.detail
    return unreachable_by_others(root) if os.geteuid() == 0 else None


def unreachable_by_others(path: Path) -> str | None:
    """Why sandbox uids could not reach `path` (an ancestor others may not enter), or None.

    Sandboxes started by root run as their own unprivileged uids and bubblewrap binds the session's
    workdir by path, so every existing ancestor of the data directory must be searchable by others.
    """
    for ancestor in reversed(path.parents):
        try:
            mode = ancestor.stat().st_mode
        except FileNotFoundError:
            break
        if not mode & stat.S_IXOTH:
            return (
                f"the data directory {path.parent} is inside {ancestor} (mode {stat.filemode(mode)}), which "
                "sandbox users cannot enter; set CORRAL_DATA_DIR to a directory outside it (e.g. /var/lib/corral)"
            )
    return None
