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
from typing import Any, Protocol

from corral.sandbox.base import (
    FileMount,
    RecipeFailed,
    Sandbox,
    SandboxDied,
    SandboxSpec,
    SandboxUnavailable,
    ToolResult,
)
from corral.sandbox.credentials import CredentialBroker
from corral.sandbox.egress import EgressProxy
from corral.sandbox.git import CloneFailure, RepositorySetup
from corral.sandbox.gvisor import check_gvisor
from corral.sandbox.limits import SandboxLimits
from corral.sandbox.mounts import bound_files, sync_live_files, write_bound_files
from corral.sandbox.outputs import capture_outputs
from corral.sandbox.pool import Backend, SandboxPool, check_isolation, session_dir
from corral.sandbox.recipes import Templates
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


class SessionFiles(Protocol):
    """The Files a sandbox shows and makes: file resources in, outputs out (`service/sandbox_files.py`)."""

    max_bytes: int
    """Largest output file captured."""

    def source(self, file_id: str) -> Path | None:
        """The stored bytes of file `file_id` on this machine, or None if it is gone. Blocking."""
        ...

    async def save_output(self, session_id: str, filename: str, fd: int) -> object:
        """Store what `fd` holds as a File scoped to the session."""
        ...


def file_mounts(session: Session) -> tuple[FileMount, ...]:
    """The session's `file` resources as mounts."""
    return tuple(
        FileMount(str(r["id"]), str(r["file_id"]), str(r["mount_path"]))
        for r in getattr(session, "resources", None) or ()
        if isinstance(r, dict) and r.get("type") == "file" and r.get("mount_path") and r.get("file_id")
    )


class SandboxToolRunner:
    """Runs agent-toolset calls in per-session sandboxes; reaps idle ones in the background."""

    def __init__(
        self,
        pool: SandboxPool,
        *,
        unavailable: str | None = None,
        environments: EnvironmentLoader | None = None,
        files: SessionFiles | None = None,
        eager: bool = False,
        credentials: CredentialLoader | None = None,
    ) -> None:
        self.pool = pool
        self.eager = eager
        """Start a session's sandbox when its turn starts (`prepare`), not on its first tool call."""
        self._preparing: set[asyncio.Task[None]] = set()
        self.environments = environments
        self.files = files
        """File resources in, outputs out; None: sandboxes get neither."""
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
        files: SessionFiles | None = None,
        credentials: CredentialLoader | None = None,
    ) -> SandboxToolRunner:
        """From `Settings.data_dir`, `.sandbox` ("bwrap" | "gvisor" | "unsafe-no-isolation"), `.sandbox_runsc`,
        `.sandbox_idle_seconds`, `.sandbox_egress_allowed_networks`, `.egress_upstream_ca_file` and the recipe
        settings (`.sandbox_pip_index_url`, `.sandbox_npm_registry`, `.sandbox_recipe_timeout`); `environments`
        loads a session's environment (networking, packages), `files` provides file resources and keeps
        outputs, `credentials` loads a session's vault credentials for the egress proxy."""
        backend = backend_of(settings)
        runsc = getattr(settings, "sandbox_runsc", None)
        eager = getattr(settings, "sandbox_provision", "lazy") == "eager"
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
            templates=Templates(
                root / "templates",
                timeout=getattr(settings, "sandbox_recipe_timeout", 600.0),
                pip_index_url=getattr(settings, "sandbox_pip_index_url", None),
                npm_registry=getattr(settings, "sandbox_npm_registry", None),
            ),
            runsc=runsc,
        )
        if backend == "unsafe":
            log.warning("sandbox: unsafe-no-isolation: agent tools run as this user, unconfined (no network policy)")
            return cls(pool, environments=environments, files=files, eager=eager)  # no proxy: no credentials
        problem = isolation_problem(root, backend, runsc)
        if problem:
            log.error("sandbox: agent tools are disabled: %s", problem)
            return cls(pool, unavailable=problem, environments=environments, files=files)
        return cls(pool, environments=environments, files=files, eager=eager, credentials=credentials)

    @staticmethod
    def describe(settings: Any) -> str:
        """One line for the operator: where agent tools will run, or why they cannot (runs the check)."""
        if str(settings.sandbox) == "unsafe-no-isolation":
            return "tools: UNSAFE, no isolation (CORRAL_SANDBOX=unsafe-no-isolation): commands run as this user"
        if str(settings.sandbox) not in ("bwrap", "gvisor"):
            return f"tools: disabled, unknown sandbox {settings.sandbox!r}"
        backend = backend_of(settings)
        problem = isolation_problem(sandboxes_dir(settings), backend, getattr(settings, "sandbox_runsc", None))
        if problem:
            return f"tools: disabled: {problem}"
        kind = "gVisor (runsc)" if backend == "gvisor" else "bubblewrap"
        return f"tools: {kind} sandboxes (isolated; network only through the egress proxy, per environment)"

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
            sandbox = await self._sandbox(session)
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
            result = await sandbox.execute(name, tool_input)
        except RecipeFailed as e:
            log.warning("sandbox for %s: environment recipe failed: %s", session.id, e)
            return ToolResult.text(
                f"The {name} tool cannot run: {e}",
                is_error=True,
                errors=(
                    {
                        "type": "unknown_error",
                        "message": f"The sandbox could not be provisioned: {e}",
                        "retry_status": {"type": "retrying"},
                    },
                ),
            )
        except SandboxUnavailable as e:
            log.error("sandbox for %s unavailable: %s", session.id, e)
            return ToolResult.text(f"The {name} tool cannot run: {e}", is_error=True)
        except SandboxDied as e:
            return ToolResult.text(
                f"{name}: the sandbox died during this call ({e}). The next call gets a fresh one; "
                "files in /workspace are kept, running processes and shell state are not.",
                is_error=True,
            )
        await self.capture(session.id)
        return result

    @property
    def mounts_files(self) -> bool:
        """Whether sandboxes get file resources and outputs (they need binds: not the unsafe backend)."""
        return self.files is not None and self.pool.backend != "unsafe"

    async def _sandbox(self, session: Session) -> Any:
        """The session's sandbox, showing its file resources as they are now.

        Resources under /mnt are synced into the running sandbox's tree; a change to those bound elsewhere
        needs a new sandbox (its files in /workspace are kept, its shell state is not)."""
        wanted = file_mounts(session)
        sandbox = await self.pool.get(SandboxSpec(session.id, ""), make_spec=lambda: self.provision_spec(session))
        if self.mounts_files and bound_files(sandbox.spec.files) != bound_files(wanted):
            log.info("file resources of %s changed outside /mnt: starting a new sandbox", session.id)
            await self.pool.destroy(session.id, remove_workdir=False)
            sandbox = await self.pool.get(SandboxSpec(session.id, ""), make_spec=lambda: self.provision_spec(session))
        if self.mounts_files:
            home = session_dir(self.pool.root_dir, session.id)
            problems = await asyncio.to_thread(sync_live_files, home, wanted, self.files.source)
            for problem in problems:
                log.warning("sandbox for %s: %s", session.id, problem)
        return sandbox

    async def capture(self, session_id: str) -> None:
        """Keep what the agent left in /mnt/session/outputs as session-scoped Files (never fails the call)."""
        if not self.mounts_files:
            return
        try:
            await capture_outputs(
                session_dir(self.pool.root_dir, session_id), session_id, self.files.save_output,
                max_bytes=self.files.max_bytes,
            )  # fmt: skip
        except Exception:
            log.exception("could not capture the outputs of session %s", session_id)

    async def spec_for(self, session: Session) -> SandboxSpec:
        """The recipe for a new sandbox of `session`: its environment's networking and packages, its agent's
        MCP servers, and its file resources.

        If the environment cannot be read, the sandbox gets no network (and the proxy says why)."""
        spec = await self._environment_spec(session)
        files = file_mounts(session)
        bound = bound_files(files)
        if files and self.mounts_files:
            if bound:
                home = session_dir(self.pool.root_dir, session.id)
                for problem in await asyncio.to_thread(write_bound_files, home, bound, self.files.source):
                    log.warning("sandbox for %s: %s", session.id, problem)
            spec = dataclasses.replace(spec, files=files)
        return spec

    async def _environment_spec(self, session: Session) -> SandboxSpec:
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
        packages = getattr(config, "packages", None)
        lists: dict[str, list[str]] = {}
        if packages is not None:
            raw = packages.model_dump(exclude={"type"}) if hasattr(packages, "model_dump") else dict(packages)
            lists = {k: list(v) for k, v in raw.items() if k != "type" and v}
        return SandboxSpec(session.id, "", networking=dumped, mcp_server_urls=mcp_urls, packages=lists)

    async def prepare(self, session: Session) -> None:
        """With eager provisioning, start the session's sandbox now, beside the turn's first model call;
        its first tool call then finds it ready (or waits for the start already under way)."""
        if not self.eager or self.unavailable:
            return
        self._start_reaper()

        async def provision() -> None:
            try:
                await self.pool.get(SandboxSpec(session.id, ""), make_spec=lambda: self.provision_spec(session))
            except Exception as e:  # the first tool call retries and reports it as its result
                log.warning("eager sandbox for %s failed: %s", session.id, e)

        task = asyncio.create_task(provision(), name="sandbox-prepare")
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

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
        """The session went idle: capture its outputs once more (a background process may have written
        some); the reaper closes its sandbox after the idle time."""
        if self.pool.current(session_id) is not None:
            await self.capture(session_id)

    async def forget(self, session_id: str) -> None:
        """The session was deleted: close its sandbox and delete its working directory."""
        await self.pool.destroy(session_id)

    async def aclose(self) -> None:
        await asyncio.gather(*self._preparing, return_exceptions=True)
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


def backend_of(settings: Any) -> Backend:
    """The pool backend for `settings.sandbox` (`ValueError` for an unknown one)."""
    choice = str(settings.sandbox)
    backends: dict[str, Backend] = {"bwrap": "bwrap", "gvisor": "gvisor", "unsafe-no-isolation": "unsafe"}
    if choice not in backends:
        raise ValueError(f"unknown sandbox {choice!r}: use 'bwrap', 'gvisor' or 'unsafe-no-isolation'")
    return backends[choice]


def sandboxes_dir(settings: Any) -> Path:
    """Where the sandbox pool keeps session working directories: `<data dir>/sandboxes`."""
    return Path(settings.data_dir).resolve() / "sandboxes"


def isolation_problem(root: Path, backend: Backend = "bwrap", runsc: str | None = None) -> str | None:
    """Why `backend` sandboxes under `root` cannot run here, or None."""
    report = check_gvisor(runsc=runsc) if backend == "gvisor" else check_isolation()
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
