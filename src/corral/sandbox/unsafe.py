"""NO ISOLATION. `UnsafeSandbox` runs the tool helper as a plain subprocess of the server.

!!! Every command the model issues runs as the server's own user, on the host, with the host's network,
!!! filesystem and processes in reach. Absolute paths, `..`, symlinks, `curl`, `kill`, `rm -rf ~` all
!!! work. Only the environment is scrubbed (no server variables reach it) and rlimits apply.

Use it only on machines where user namespaces are unavailable (Docker without privileges, Ubuntu 24.04
with AppArmor's userns restriction) and only when the operator explicitly chose it: the server exposes it
as `--sandbox unsafe-no-isolation` and must never fall back to it on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from corral.sandbox.base import SandboxSpec, SandboxUnavailable
from corral.sandbox.channel import HELPER_PATH, STREAM_LIMIT, HelperSandbox
from corral.sandbox.limits import SandboxLimits, apply_rlimits, rlimit_plan

__all__ = ["UnsafeSandbox"]

SCRUBBED_PREFIXES = ("ANTHROPIC_", "CORRAL_")


class UnsafeSandbox(HelperSandbox):
    """The helper in `spec.workdir`, unconfined. See the module docstring before using this."""

    @classmethod
    async def start(cls, spec: SandboxSpec, limits: SandboxLimits | None = None) -> UnsafeSandbox:
        if not spec.workdir:
            raise ValueError("SandboxSpec.workdir is required (SandboxPool fills it in)")
        limits = limits or SandboxLimits()
        workdir = os.path.realpath(spec.workdir)
        await asyncio.to_thread(Path(workdir).mkdir, parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": workdir,
            "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        }
        env.update({k: v for k, v in spec.env.items() if k and not k.startswith(SCRUBBED_PREFIXES)})
        plan = rlimit_plan(limits, memory_cgroup=False, own_uid=False)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                HELPER_PATH,
                "--workdir",
                workdir,
                "--output-limit",
                str(limits.output_bytes),
                "--timeout",
                str(limits.call_timeout),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                preexec_fn=lambda: apply_rlimits(plan),
                limit=STREAM_LIMIT,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise SandboxUnavailable(f"could not start the tool helper: {e}") from e
        sandbox = cls(spec, limits, proc)
        try:
            await sandbox.ping(timeout=limits.startup_timeout)
        except Exception as e:
            await sandbox.close()
            raise SandboxUnavailable(f"tool helper failed to start ({e}): {sandbox.stderr_tail()}") from e
        return sandbox

    async def _kill(self) -> None:
        # EOF first: the helper then SIGKILLs its shell's process group (which lives in its own session,
        # out of our reach), and exits. Only if it does not, kill the helper itself.
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 2)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
