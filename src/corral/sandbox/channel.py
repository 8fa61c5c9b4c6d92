"""The host side of `helper.py`: a JSON-lines channel to it and the `Sandbox` methods built on that.

Backends differ only in how they start (and kill) the helper process; `HelperSandbox` holds everything
else: one call at a time per sandbox, interrupt, liveness, deadlines, and turning a vanished process into
`SandboxDied` for the call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

from corral.sandbox import childwatch
from corral.sandbox.base import SandboxDied, SandboxSpec, ToolResult
from corral.sandbox.limits import SandboxLimits

__all__ = ["HELPER_PATH", "SANDBOX_TOOLS", "HelperSandbox", "launch"]

log = logging.getLogger(__name__)

HELPER_PATH = __file__.rsplit("/", 1)[0] + "/helper.py"
SANDBOX_TOOLS = frozenset({"bash", "read", "write", "edit", "glob", "grep"})
STREAM_LIMIT = 64 * 1024 * 1024
"""Largest reply line: a 20 MiB PDF is ~27 MiB of base64."""
GRACE = 10.0
"""Extra seconds the helper gets past a call's own timeout before it is declared hung."""


async def launch(*argv: str, **options: Any) -> asyncio.subprocess.Process:
    """Start an isolating backend's outermost host process (bwrap, runsc): pipes for the helper's
    channel, `/` as its directory, an environment with nothing of the server's in it, and its own
    session, so that killing its process group reaches everything it started."""
    childwatch.install()  # no thread per sandbox waiting for it to exit (Python 3.11)
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        start_new_session=True,
        limit=STREAM_LIMIT,
        **options,
    )


class HelperSandbox(ABC):
    """A running helper process; subclasses provide `_kill()` and may enrich `_death_reason()`."""

    def __init__(self, spec: SandboxSpec, limits: SandboxLimits, proc: asyncio.subprocess.Process) -> None:
        self.spec = spec
        self.limits = limits
        self._proc = proc
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._call_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._closer: asyncio.Future[None] | None = None
        self._dead: str | None = None
        self._stderr_tail = bytearray()
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._reader = asyncio.create_task(self._read_replies())
        self.last_used = time.monotonic()

    # -- Sandbox protocol ------------------------------------------------------------------------
    async def execute(self, name: str, input: dict[str, Any], *, timeout: float | None = None) -> ToolResult:
        if name not in SANDBOX_TOOLS:
            return ToolResult.text(f"unknown sandbox tool: {name}", is_error=True)
        if not isinstance(input, dict):
            return ToolResult.text(f"{name}: input must be an object", is_error=True)
        seconds = self._call_timeout(name, input, timeout)
        async with self._call_lock:
            self.last_used = time.monotonic()
            try:
                reply = await self._request(
                    {"op": "call", "name": name, "input": input, "timeout": seconds}, seconds + GRACE, name
                )
            except asyncio.CancelledError:
                self._send_nowait({"op": "interrupt"})  # don't leave the command running behind our back
                raise
            finally:
                self.last_used = time.monotonic()
        return ToolResult(content=list(reply.get("content") or []), is_error=bool(reply.get("is_error")))

    async def interrupt(self) -> None:
        """Stop the call in flight (the helper answers it with an "interrupted" error)."""
        self._send_nowait({"op": "interrupt"})

    def alive(self) -> bool:
        return self._dead is None and self._proc.returncode is None

    async def close(self) -> None:
        """Kill the sandbox, wait for it and release its host resources; idempotent, safe to race."""
        if self._closer is None:
            self._closing = True
            self._closer = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closer)

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await self._kill()
        await self._reader
        with contextlib.suppress(Exception):
            await self._stderr_task
        await self._after_close()

    # -- extras the pool and bench use -------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._call_lock.locked()

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time in seconds; answered even while a call runs."""
        start = time.perf_counter()
        await self._request({"op": "ping"}, timeout, "ping")
        return time.perf_counter() - start

    async def set_env(self, env: dict[str, str], timeout: float = 5.0) -> None:
        """Variables for every shell the helper starts from now on: how a ready sandbox adopted by a
        session with vault credentials gets their placeholders (it has run no call yet)."""
        await self._request({"op": "env", "set": env}, timeout, "env")

    # -- backend hooks -----------------------------------------------------------------------------
    @abstractmethod
    async def _kill(self) -> None:
        """Kill the whole sandbox tree (not just the helper) and reap it."""

    async def _after_close(self) -> None:
        """Release host resources (cgroups, ...) once everything inside is dead."""
        return None

    def _death_reason(self, returncode: int | None) -> str:
        reason = f"sandbox process exited (status {returncode})"
        tail = self.stderr_tail()
        return f"{reason}: {tail}" if tail else reason

    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace").strip()

    # -- plumbing -----------------------------------------------------------------------------------
    def _call_timeout(self, name: str, input: dict[str, Any], timeout: float | None) -> float:
        seconds = timeout or self.limits.call_timeout
        if name == "bash" and isinstance(input.get("timeout_ms"), int) and input["timeout_ms"] > 0:
            seconds = input["timeout_ms"] / 1000
            if timeout:
                seconds = min(seconds, timeout)
        return min(seconds, self.limits.max_call_timeout)

    async def _request(self, msg: dict[str, Any], deadline: float, what: str) -> dict[str, Any]:
        if not self.alive():
            raise SandboxDied(self._dead or "sandbox is not running")
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            line = json.dumps({**msg, "id": msg_id}).encode()  # ASCII: lone surrogates travel as escapes
            async with self._write_lock:
                assert self._proc.stdin is not None
                self._proc.stdin.write(line + b"\n")
                await self._proc.stdin.drain()
            return await asyncio.wait_for(future, deadline)
        except SandboxDied:
            raise
        except (ConnectionError, RuntimeError) as e:
            raise SandboxDied(self._dead or f"sandbox is gone ({e})") from e
        except TimeoutError:
            log.warning("sandbox %s did not answer %s within %.1fs; killing it", self.spec.session_id, what, deadline)
            await self.close()
            raise SandboxDied(f"sandbox stopped responding ({what} took over {deadline:g}s); it was killed") from None
        finally:
            self._pending.pop(msg_id, None)

    def _send_nowait(self, msg: dict[str, Any]) -> None:
        if self.alive() and self._proc.stdin is not None:
            with contextlib.suppress(Exception):
                self._proc.stdin.write(json.dumps(msg).encode() + b"\n")

    async def _read_replies(self) -> None:
        assert self._proc.stdout is not None
        try:
            while True:
                line = await self._proc.stdout.readline()
                if not line:
                    break
                try:
                    reply = json.loads(line)
                except ValueError:
                    log.warning("sandbox %s: garbled reply %r", self.spec.session_id, line[:200])
                    continue
                future = self._pending.get(reply.get("id"))
                if future is not None and not future.done():
                    future.set_result(reply)
        except (ValueError, ConnectionError) as e:  # an over-long line or a broken pipe
            log.warning("sandbox %s: reply stream failed: %s", self.spec.session_id, e)
            with contextlib.suppress(Exception):
                await self._kill()
        returncode: int | None = None
        with contextlib.suppress(TimeoutError):
            returncode = await asyncio.wait_for(self._proc.wait(), 5)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 1)
        self._dead = "sandbox was closed" if self._closing else self._death_reason(returncode)
        if not self._closing:
            log.warning("sandbox %s died: %s", self.spec.session_id, self._dead)
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SandboxDied(self._dead))

    async def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(4096):
            self._stderr_tail += chunk
            del self._stderr_tail[:-4096]
