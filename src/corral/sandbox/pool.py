"""`SandboxPool`: lazily provisioned, per-session sandboxes, replaced when dead, reaped when idle.

Sandboxes are cattle (see `base.py`): the pool keeps only a cache keyed by session id. A session's
workdir (`root_dir/sessions/<id>/workspace`) outlives its sandbox; idle sandboxes are closed and a new
one is started from the same recipe on the next `get()`.

Prewarming: starting a sandbox costs ~25-45 ms (bwrap, the helper's Python, the cgroup move), so the pool keeps
`prewarm` sandboxes ready for each recipe (networking, env, packages) it provisioned recently, each on
an empty directory of its own (`root_dir/warm/<slot>`). A new session with that recipe adopts one: its
directory is renamed to `root_dir/sessions/<id>` (the sandbox's bind mount follows the directory, not
the path), so its first tool call does not wait for a sandbox to start. Sessions that already have
files (a sandbox reclaimed when idle, or one that died) always get a fresh sandbox on their own files.
No sandbox is started with a session's vault credentials: a session that has some adopts one of its
recipe without them and gets them on adoption (placeholders set in the helper, before any call; the
session's broker on the sandbox's egress socket).

Recipes: an environment's `config.packages` is part of the recipe key, so a ready sandbox is only ever
adopted by a session of the same packages; `_provision` binds the recipe's template (`recipes.py`: built
once, shared read-only by every sandbox of the recipe), building it first if it is new.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from corral.sandbox.base import Mount, Sandbox, SandboxDied, SandboxSpec
from corral.sandbox.egress import EgressProxy
from corral.sandbox.gvisor import GvisorSandbox
from corral.sandbox.limits import SandboxLimits
from corral.sandbox.local import UID_BASE, UID_COUNT, BwrapSandbox, IsolationReport, check_isolation
from corral.sandbox.mounts import bound_files
from corral.sandbox.recipes import RECIPE_DIR, Templates, recipe_env
from corral.sandbox.uids import UidLeases
from corral.sandbox.unsafe import UnsafeSandbox

__all__ = ["Backend", "IsolationReport", "SandboxPool", "check_isolation", "session_dir"]

log = logging.getLogger(__name__)

Backend = Literal["bwrap", "gvisor", "unsafe"]
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def session_dir(root_dir: Path, session_id: str) -> Path:
    """`root_dir/sessions/<id>`: the session's files (its workdir is `workspace` inside)."""
    if not _SESSION_ID.match(session_id):
        raise ValueError(f"session id {session_id!r} cannot name a directory")
    return root_dir / "sessions" / session_id


@dataclasses.dataclass
class _Entry:
    sandbox: Sandbox
    last_used: float


@dataclasses.dataclass
class _Warm:
    """A started sandbox waiting for a session, on its own directory `home` (holding `workspace`)."""

    sandbox: Sandbox
    home: Path
    slot: str


MAX_WARM_RECIPES = 4
"""Recipes the pool keeps sandboxes ready for (the most recently used)."""


def recipe_key(spec: SandboxSpec) -> str:
    """What makes two sandboxes interchangeable before a session's files and credentials are in them."""
    fields = dataclasses.asdict(without_credentials(spec))
    fields.pop("credentials")
    fields.pop("session_id")
    fields.pop("workdir")
    fields.pop("files")  # the session's own: a ready sandbox has none, they are added after adoption
    return json.dumps(fields, sort_keys=True, default=list)


def without_credentials(spec: SandboxSpec) -> SandboxSpec:
    """`spec` as a sandbox started ahead has it: no broker, and none of its credentials' placeholder
    variables (a session's credentials are its own; they are given to a ready sandbox on adoption)."""
    if spec.credentials is None:
        return spec
    placeholders = spec.credentials.environment
    env = {k: v for k, v in spec.env.items() if k not in placeholders}
    return dataclasses.replace(spec, credentials=None, env=env)


class SandboxPool:
    """One live sandbox per session id, provisioned on first use."""

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        backend: Backend = "bwrap",
        *,
        limits: SandboxLimits | None = None,
        idle_seconds: float = 600.0,
        uid_base: int = UID_BASE,
        uid_count: int = UID_COUNT,
        egress: EgressProxy | bool = True,
        prewarm: int = 0,
        templates: Templates | None = None,
        runsc: str | None = None,
    ) -> None:
        """`egress`: the proxy that carries the sandboxes' traffic (True: a default one, started with the
        first sandbox; False: sandboxes get no network at all, whatever their environment says).
        `templates`: where environment recipes are built (default `root_dir/templates`, public registries).
        `runsc`: the gVisor binary for the `gvisor` backend (None: found on PATH)."""
        if backend not in ("bwrap", "gvisor", "unsafe"):
            raise ValueError(f"unknown sandbox backend {backend!r} (expected 'bwrap', 'gvisor' or 'unsafe')")
        self.root_dir = Path(root_dir).resolve()
        self.backend: Backend = backend
        self.runsc = runsc
        self.limits = limits or SandboxLimits()
        self.idle_seconds = idle_seconds
        self._leases = UidLeases(range(uid_base, uid_base + uid_count))
        self._uids: dict[str, int] = {}
        """Host uid per session (or ready slot, or recipe build), leased machine-wide until forgotten."""
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        self.prewarm = prewarm if backend != "unsafe" else 0
        """Started sandboxes kept ready per recently used recipe (0: none; not for the unsafe backend)."""
        self._warm: dict[str, list[_Warm]] = {}
        self._filling: dict[str, asyncio.Task[None]] = {}
        self._discarding: set[asyncio.Task[None]] = set()
        self.egress: EgressProxy | None = EgressProxy() if egress is True else egress or None
        self.templates = templates or Templates(self.root_dir / "templates")
        self.templates.binds = backend != "unsafe"

    def workdir_for(self, session_id: str) -> Path:
        return session_dir(self.root_dir, session_id) / "workspace"

    async def get(self, spec: SandboxSpec, *, make_spec: Callable[[], Awaitable[SandboxSpec]] | None = None) -> Sandbox:
        """The session's live sandbox, provisioning one (or replacing a dead one) as needed.

        An empty `spec.workdir` means "the pool's workdir for this session". `make_spec`, when given, is
        awaited only when a sandbox must be provisioned, and its spec is used instead of `spec` (so the
        environment is read once per sandbox, not once per call).
        """
        if self._closed:
            raise RuntimeError("sandbox pool is closed")
        entry = self._entries.get(spec.session_id)
        if entry is not None and entry.sandbox.alive():
            entry.last_used = time.monotonic()
            return entry.sandbox
        lock = self._locks.setdefault(spec.session_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(spec.session_id)
            if entry is not None and entry.sandbox.alive():
                entry.last_used = time.monotonic()
                return entry.sandbox
            if entry is not None:
                log.info("sandbox for %s is dead; provisioning a new one", spec.session_id)
                self._entries.pop(spec.session_id)
                await entry.sandbox.close()
            if make_spec is not None:
                spec = await make_spec()
            sandbox = await self._adopt(spec) or await self._provision(spec)
            self._entries[spec.session_id] = _Entry(sandbox, time.monotonic())
            self._refill(spec)
            return sandbox

    # ---- prewarming ----------------------------------------------------------------------------

    async def _adopt(self, spec: SandboxSpec) -> Sandbox | None:
        """A ready sandbox of this recipe, moved to the new session (None if none fits); with the
        session's credentials, if it has any: their placeholders in the helper's environment, their
        broker on the sandbox's egress socket."""
        if not self.prewarm or spec.workdir or bound_files(spec.files):
            return None
        target = session_dir(self.root_dir, spec.session_id)
        slots = self._warm.get(recipe_key(spec), [])
        if not slots or target.exists():
            return None  # existing files keep their owner and get a sandbox of their own
        while slots:
            warm = slots.pop()
            if not warm.sandbox.alive():
                self._discard(warm)
                continue
            if spec.credentials is not None:
                try:
                    await warm.sandbox.set_env(dict(spec.credentials.environment))
                except SandboxDied:
                    self._discard(warm)
                    continue
            target.parent.mkdir(parents=True, exist_ok=True)
            self._restrict(target.parent)
            os.rename(warm.home, target)  # the sandbox's /workspace mount follows the directory
            warm.sandbox.spec = dataclasses.replace(
                spec, workdir=str(target / "workspace"), mounts=warm.sandbox.spec.mounts
            )
            listener = getattr(warm.sandbox, "egress", None)
            if listener is not None:
                listener.session_id = spec.session_id
                listener.broker = spec.credentials
            if warm.slot in self._uids:
                self._uids[spec.session_id] = self._uids.pop(warm.slot)
            return warm.sandbox
        return None

    def _refill(self, spec: SandboxSpec) -> None:
        """Top up the ready sandboxes of `spec`'s recipe (without its credentials) in the background."""
        if not self.prewarm or self._closed:
            return
        spec, key = without_credentials(spec), recipe_key(spec)
        self._warm[key] = self._warm.pop(key, [])  # most recently used last
        while len(self._warm) > MAX_WARM_RECIPES:
            for warm in self._warm.pop(next(iter(self._warm))):
                self._discard(warm)
        task = self._filling.get(key)
        if task is None or task.done():
            self._filling[key] = asyncio.create_task(self._fill(key, spec), name="sandbox-prewarm")

    async def _fill(self, key: str, spec: SandboxSpec) -> None:
        while not self._closed and key in self._warm and len(self._warm[key]) < self.prewarm:
            slot = f"warm-{uuid.uuid4().hex[:16]}"
            home = self.root_dir / "warm" / slot
            try:
                sandbox = await self._provision(
                    dataclasses.replace(spec, session_id=slot, workdir=str(home / "workspace"), files=())
                )
            except Exception:
                log.warning("could not prewarm a sandbox", exc_info=True)
                await asyncio.to_thread(shutil.rmtree, home, True)
                self._forget_uid(slot)
                return
            warm = _Warm(sandbox, home, slot)
            if self._closed or key not in self._warm:
                self._discard(warm)
                return
            self._warm[key].append(warm)

    def _discard(self, warm: _Warm) -> None:
        async def close() -> None:
            await warm.sandbox.close()
            self._forget_uid(warm.slot)  # only now: its processes are gone
            await asyncio.to_thread(shutil.rmtree, warm.home, True)

        task = asyncio.create_task(close(), name="sandbox-discard")
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def _provision(self, spec: SandboxSpec) -> Sandbox:
        if not spec.workdir:
            spec = dataclasses.replace(spec, workdir=str(self.workdir_for(spec.session_id)))
        spec = await self._with_recipe(spec)
        return await self._start(spec)

    async def _with_recipe(self, spec: SandboxSpec) -> SandboxSpec:
        """`spec` plus its environment recipe's template (built first if this is its first sandbox)."""
        recipe = self.templates.recipe_for(spec.packages)
        if recipe is None:
            return spec
        try:
            path = await self.templates.ensure(recipe, self._start)
        finally:
            self._forget_uid(recipe.build_id)  # the build's sandbox is closed and its directories gone
        mounts = spec.mounts
        if self.templates.binds:
            mounts = (*mounts, Mount(str(path), RECIPE_DIR))
        return dataclasses.replace(spec, mounts=mounts, env={**spec.env, **recipe_env(self.templates.inside(recipe))})

    async def _start(self, spec: SandboxSpec) -> Sandbox:
        if self.backend == "unsafe":
            return await UnsafeSandbox.start(spec, self.limits)
        await asyncio.to_thread(self._make_dirs, Path(spec.workdir).parent)
        uid = self._uid_for(spec.session_id, Path(spec.workdir)) if os.geteuid() == 0 else None
        if self.backend == "gvisor":
            return await GvisorSandbox.start(spec, self.limits, host_uid=uid, egress=self.egress, runsc=self.runsc)
        return await BwrapSandbox.start(spec, self.limits, host_uid=uid, egress=self.egress)

    def _make_dirs(self, session_dir: Path) -> None:
        """Create the pool's directories searchable but unlistable (0711): sandboxes run as other uids."""
        session_dir.mkdir(parents=True, exist_ok=True)
        self._restrict(session_dir)

    def _restrict(self, directory: Path) -> None:
        """Mode 0711 on `directory` and its parents up to the pool's root (as root only)."""
        if os.geteuid() != 0 or not directory.is_relative_to(self.root_dir):
            return
        for d in (directory, *directory.parents):
            if not d.is_relative_to(self.root_dir):
                break
            os.chmod(d, 0o711)

    def _uid_for(self, session_id: str, workdir: Path) -> int:
        """Keep a session's uid stable: its files' owner when that uid is free (no chown), else a new one,
        leased machine-wide (`uids.UidLeases`: other corral processes hand out the same range)."""
        if session_id in self._uids:
            return self._uids[session_id]
        try:
            owner: int | None = workdir.stat().st_uid
        except OSError:
            owner = None
        uid = self._leases.lease(preferred=owner)
        self._uids[session_id] = uid
        return uid

    def _forget_uid(self, key: str) -> None:
        """`key` (a session, ready slot or recipe build) no longer needs its uid: give up the lease."""
        uid = self._uids.pop(key, None)
        if uid is not None:
            self._leases.release(uid)

    async def release_idle(self) -> list[str]:
        """Close sandboxes unused for `idle_seconds` (their workdirs stay, and their uid's lease goes: the
        next sandbox prefers the files' owner again). Returns their session ids."""
        now = time.monotonic()
        idle = []
        for session_id, entry in list(self._entries.items()):
            last = max(entry.last_used, getattr(entry.sandbox, "last_used", 0.0))
            if not getattr(entry.sandbox, "busy", False) and now - last >= self.idle_seconds:
                idle.append(session_id)
        for session_id in idle:
            entry = self._entries.pop(session_id)
            await entry.sandbox.close()
            self._forget_uid(session_id)  # leases are held by live sandboxes only, not every session seen
        return idle

    async def destroy(self, session_id: str, remove_workdir: bool = True) -> None:
        """Close the session's sandbox, forget its uid and (by default) delete `root_dir/sessions/<id>`."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            await entry.sandbox.close()
        self._locks.pop(session_id, None)
        self._forget_uid(session_id)
        if remove_workdir:
            await asyncio.to_thread(shutil.rmtree, session_dir(self.root_dir, session_id), ignore_errors=True)

    async def aclose(self) -> None:
        """Close every sandbox (workdirs are kept; ready ones' directories are removed)."""
        self._closed = True
        # Fills in flight finish their start and, seeing the pool closed, discard what they made.
        await asyncio.gather(*self._filling.values(), return_exceptions=True)
        self._filling.clear()
        for warms in self._warm.values():
            for warm in warms:
                self._discard(warm)
        self._warm.clear()
        await asyncio.gather(*self._discarding, return_exceptions=True)
        entries, self._entries = list(self._entries.values()), {}
        await asyncio.gather(*(e.sandbox.close() for e in entries), return_exceptions=True)
        self._uids.clear()
        self._leases.release_all()
        if self.egress is not None:
            await self.egress.aclose()

    def current(self, session_id: str) -> Sandbox | None:
        """The session's sandbox if one is provisioned (alive or not), without starting one."""
        entry = self._entries.get(session_id)
        return entry.sandbox if entry is not None else None

    def __len__(self) -> int:
        return len(self._entries)
