"""`SandboxToolRunner`: the harness's `ToolRunner` (harness/tools.py) on top of a `SandboxPool`.

It validates the model's input against the toolset schemas, routes the six sandbox tools to the
session's sandbox, and turns sandbox failures into error results the model can read, so a dead or
unavailable sandbox never fails the harness step. `runtime.py` builds it from the settings.

Networking: when a session's sandbox is provisioned, the runner reads the session's environment (through
the `environments` loader it was given) and puts its `config.networking` in the `SandboxSpec`; the pool's
egress proxy applies it to that sandbox for as long as it lives. So a change to an environment's
networking applies from the next sandbox provisioned for a session (after an idle close, a dead sandbox,
or a new session), never to one already running, as the API says ("config changes affect only new
containers").

Credentials: the session's `CredentialBroker` (vault/broker.py, through the `credentials` loader) is put in
the spec too, its placeholders in the sandbox's environment; the proxy asks it on every request. Before
each call, the session's repository resources the sandbox does not have yet are cloned (`git.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from corral.sandbox.base import Sandbox, SandboxDied, SandboxSpec, SandboxUnavailable, ToolResult
from corral.sandbox.credentials import CredentialBroker
from corral.sandbox.egress import EgressProxy
from corral.sandbox.git import CloneFailure, RepositorySetup
from corral.sandbox.limits import SandboxLimits
from corral.sandbox.pool import Backend, SandboxPool, check_isolation
from corral.sandbox.tls import CertificateAuthority
from corral.schemas.sessions import Session
from corral.tools.toolset import TOOLS, validate_input

__all__ = ["SandboxToolRunner"]

log = logging.getLogger(__name__)

SANDBOX_TOOL_NAMES = tuple(name for name, tool in TOOLS.items() if tool.in_sandbox)

EnvironmentLoader = Callable[[str], Awaitable[Any]]
"""`environment id -> Environment` (schemas/environments.py), e.g. `store.environments.get`."""
CredentialLoader = Callable[[Session], Awaitable[CredentialBroker | None]]
"""`session -> its credentials` for the egress proxy (vault/broker.py), None when it has none."""


class SandboxToolRunner:
    """Runs agent-toolset calls in per-session sandboxes; reaps idle ones in the background."""

    def __init__(
        self,
        pool: SandboxPool,
        *,
        unavailable: str | None = None,
        environments: EnvironmentLoader | None = None,
        credentials: CredentialLoader | None = None,
    ) -> None:
        self.pool = pool
        self.environments = environments
        self.credentials = credentials
        """Loads a session's credentials when its sandbox is provisioned (None: sandboxes get none)."""
        """Loads a session's environment when its sandbox is provisioned; None: every sandbox gets the
        `SandboxSpec` default (`unrestricted`)."""
        self.unavailable = unavailable
        """Why no sandbox can run here (then no tools are offered and every call says why)."""
        names = () if unavailable else SANDBOX_TOOL_NAMES
        self.definitions: dict[str, dict[str, Any]] = {n: TOOLS[n].tool_definition() for n in names}
        self._reaper: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        environments: EnvironmentLoader | None = None,
        credentials: CredentialLoader | None = None,
    ) -> SandboxToolRunner:
        """From `Settings.data_dir`, `.sandbox` ("bwrap" | "unsafe-no-isolation"), `.sandbox_idle_seconds`
        and `.sandbox_egress_allowed_networks`; `environments` loads a session's environment (networking)."""
        choice = str(settings.sandbox)
        if choice not in ("bwrap", "unsafe-no-isolation"):
            raise ValueError(f"unknown sandbox {choice!r}: use 'bwrap' or 'unsafe-no-isolation'")
        backend: Backend = "unsafe" if choice == "unsafe-no-isolation" else "bwrap"
        root = sandboxes_dir(settings)
        upstream_ca = getattr(settings, "egress_upstream_ca_file", None)
        egress = EgressProxy(
            allowed_networks=getattr(settings, "sandbox_egress_allowed_networks", None) or (),
            ca=CertificateAuthority(Path(settings.data_dir).resolve() / "egress-ca"),
            upstream_ca_file=str(upstream_ca) if upstream_ca else None,
        )
        pool = SandboxPool(
            root,
            backend,
            limits=SandboxLimits(),
            idle_seconds=settings.sandbox_idle_seconds,
            egress=egress,
            prewarm=settings.sandbox_prewarm,
        )
        if backend == "unsafe":
            log.warning("sandbox: unsafe-no-isolation: agent tools run as this user, unconfined (no network policy)")
            return cls(pool, environments=environments)  # no proxy, hence no credentials
        problem = isolation_problem(root)
        if problem:
            log.error("sandbox: agent tools are disabled: %s", problem)
            return cls(pool, unavailable=problem, environments=environments)
        return cls(pool, environments=environments, credentials=credentials)

    @staticmethod
    def describe(settings: Any) -> str:
        """One line for the operator: where agent tools will run, or why they cannot (runs the check)."""
        if str(settings.sandbox) == "unsafe-no-isolation":
            return "tools: UNSAFE, no isolation (CORRAL_SANDBOX=unsafe-no-isolation): commands run as this user"
        if str(settings.sandbox) != "bwrap":
            return f"tools: disabled, unknown sandbox {settings.sandbox!r}"
        problem = isolation_problem(sandboxes_dir(settings))
        if problem:
            return f"tools: disabled: {problem}"
        return "tools: bubblewrap sandboxes (isolated; network only through the egress proxy, per environment)"

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
            sandbox = await self.pool.get(SandboxSpec(session.id, ""), make_spec=lambda: self.provision_spec(session))
            failures = await self.set_up_repositories(session, sandbox)
            if failures:
                listing = "\n".join(f"- {f.message}" for f in failures)
                return ToolResult.text(
                    f"The {name} call was not run: the session's repositories could not be set up:\n{listing}\n"
                    "The session continues without them; the next call runs normally (updating a repository "
                    "resource's authorization_token retries its clone).",
                    is_error=True,
                    errors=tuple(f.error() for f in failures),
                )
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

    async def spec_for(self, session: Session) -> SandboxSpec:
        """The recipe for a new sandbox of `session`: its environment's networking, its agent's MCP servers.

        If the environment cannot be read, the sandbox gets no network (and the proxy says why)."""
        agent = getattr(session, "agent", None)
        mcp_urls = tuple(str(s.url) for s in getattr(agent, "mcp_servers", None) or ())
        env_id = getattr(session, "environment_id", None)
        if self.environments is None or not env_id:
            return SandboxSpec(session.id, "", mcp_server_urls=mcp_urls)
        try:
            environment = await self.environments(env_id)
        except Exception as e:
            log.warning("sandbox for %s: cannot read environment %s: %s", session.id, env_id, e)
            reason = f"its environment {env_id} could not be read ({e})"
            return SandboxSpec(session.id, "", networking={"type": "none", "reason": reason})
        config = getattr(environment, "config", environment)
        networking = getattr(config, "networking", None)
        if networking is None:
            kind = getattr(config, "type", "unknown")
            reason = f"the environment {env_id} is of type {kind!r}, which gives corral's sandboxes no network"
            return SandboxSpec(session.id, "", networking={"type": "none", "reason": reason})
        dumped = networking.model_dump(mode="json") if hasattr(networking, "model_dump") else dict(networking)
        return SandboxSpec(session.id, "", networking=dumped, mcp_server_urls=mcp_urls)

    async def provision_spec(self, session: Session) -> SandboxSpec:
        """`spec_for(session)` plus the session's credentials: their placeholders in the env, the broker
        for the proxy. Credentials that cannot be read make the sandbox unavailable (the call says why)."""
        spec = await self.spec_for(session)
        if self.credentials is None:
            return spec
        try:
            broker = await self.credentials(session)
        except Exception as e:
            log.exception("sandbox for %s: cannot read the session's credentials", session.id)
            raise SandboxUnavailable(f"the session's vault credentials could not be read: {e}") from e
        if broker is None:
            return spec
        return dataclasses.replace(spec, env={**spec.env, **broker.environment}, credentials=broker)

    async def set_up_repositories(self, session: Session, sandbox: Sandbox) -> list[CloneFailure]:
        """Clone the session's repository resources this sandbox does not have yet (`git.py`)."""
        resources = list(getattr(session, "resources", None) or [])
        if not any(r.get("type") == "github_repository" for r in resources):
            return []
        setup = getattr(sandbox, "repositories", None)
        if setup is None:
            setup = RepositorySetup()
            sandbox.repositories = setup  # type: ignore[attr-defined]
        return await setup.run(sandbox, resources)

    async def interrupt(self, session_id: str) -> None:
        sandbox = self.pool.current(session_id)
        if sandbox is not None and sandbox.alive():
            await sandbox.interrupt()

    async def release(self, session_id: str) -> None:
        """The session went idle: nothing to do now; the reaper closes its sandbox after the idle time."""
        return None

    async def forget(self, session_id: str) -> None:
        """The session was deleted: close its sandbox and delete its working directory."""
        await self.pool.destroy(session_id)

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


def sandboxes_dir(settings: Any) -> Path:
    """Where the sandbox pool keeps session working directories: `<data dir>/sandboxes`."""
    return Path(settings.data_dir).resolve() / "sandboxes"


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
            where = (
                f"the data directory {ancestor}"
                if ancestor == path.parent
                else f"the data directory {path.parent} is inside {ancestor}, which"
            )
            return (
                f"{where} (mode {stat.filemode(mode)}) cannot be entered by sandbox users; make it searchable "
                "(chmod o+x) or set CORRAL_DATA_DIR to a directory that is (e.g. /var/lib/corral)"
            )
    return None
