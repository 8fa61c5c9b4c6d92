"""Environment recipes: an environment's `config.packages`, installed once into a shared, read-only template.

A sandbox of an environment with packages gets `<templates>/<key>` bound read-only at /opt/corral/recipe,
where `<key>` hashes what was installed and from where (the package lists and the index/registry URLs).
The first sandbox of a recipe builds the template; every later one, in any session, binds the finished
directory, so provisioning stays as fast as without packages. Inside:

    /opt/corral/recipe/python        pip install --target (on PYTHONPATH; console scripts in python/bin)
    /opt/corral/recipe/node          npm install --prefix (node_modules on NODE_PATH; .bin on PATH)

The build runs inside a sandbox of its own (same isolation as the agent's), with the directory being built
bound read-write at the same path, and network only through the egress proxy to the package registries
(the public ones of `egress.PACKAGE_REGISTRY_HOSTS`, plus the hosts of the configured index and registry),
whatever the environment's networking: installing is corral's step, not the agent's. It is built in a
temporary directory and renamed into place when complete, so a template either exists whole or not at all.
One build per recipe at a time: an asyncio lock within the process and an `flock` across processes sharing
the data directory; whoever waited finds the finished template.

pip and npm are supported: the image's own `python3 -m pip` and `npm` do it without root. apt, cargo, gem
and go lists are refused when a sandbox is provisioned (`RecipeFailed`, which the runner turns into an error
result and a `session.error`): apt needs root in the image, and cargo/gem/go toolchains are not part of it.
A failed build is remembered for `FAILURE_TTL` seconds, so a session's next calls fail fast instead of each
rebuilding; after that the next provisioning tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corral.sandbox.base import Mount, RecipeFailed, Sandbox, SandboxSpec
from corral.sandbox.mounts import DEFAULT_PATH

__all__ = ["RECIPE_DIR", "Recipe", "Templates", "recipe_env"]

log = logging.getLogger(__name__)

RECIPE_DIR = "/opt/corral/recipe"
SUPPORTED = ("pip", "npm")
UNSUPPORTED = {
    "apt": "apt needs root inside the sandbox image",
    "cargo": "there is no Rust toolchain in the sandbox image",
    "gem": "there is no Ruby in the sandbox image",
    "go": "there is no Go toolchain in the sandbox image",
}
FORMAT = 1
"""Bumped when the template layout changes, so old templates are not reused."""
FAILURE_TTL = 30.0
MARKER = ".corral-recipe.json"
_OUTPUT_TAIL = 3000


@dataclass(frozen=True)
class Recipe:
    """What goes into one template: the package lists and where they come from."""

    pip: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    pip_index_url: str | None = None
    npm_registry: str | None = None

    @classmethod
    def from_packages(
        cls, packages: Mapping[str, Sequence[str]], *, pip_index_url: str | None = None, npm_registry: str | None = None
    ) -> Recipe | None:
        """The recipe of an environment's `config.packages`, or None when it lists nothing.

        `RecipeFailed` when it asks for a manager corral cannot run, or for an entry that is not a package."""
        refused = [m for m in UNSUPPORTED if packages.get(m)]
        if refused:
            why = "; ".join(f"{m} ({', '.join(packages[m])}): {UNSUPPORTED[m]}" for m in refused)
            raise RecipeFailed(
                f"the environment's packages cannot be installed: corral installs pip and npm packages only; {why}. "
                "Remove them from config.packages, or install them in the sandbox image."
            )
        lists = {m: tuple(str(p) for p in packages.get(m) or ()) for m in SUPPORTED}
        for manager, entries in lists.items():
            for entry in entries:
                if not entry.strip() or entry.lstrip().startswith("-") or any(c in entry for c in "\0\n\r"):
                    raise RecipeFailed(f"the environment's {manager} packages list {entry!r}, which is not a package")
        if not any(lists.values()):
            return None
        return cls(
            pip=lists["pip"],
            npm=lists["npm"],
            pip_index_url=pip_index_url if lists["pip"] else None,
            npm_registry=npm_registry if lists["npm"] else None,
        )

    @property
    def key(self) -> str:
        data = json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:32]

    @property
    def build_id(self) -> str:
        """The name of the sandbox that builds this recipe (one at a time)."""
        return f"recipe-{self.key[:16]}"

    def networking(self) -> dict[str, Any]:
        """The build's egress policy: the public registries plus the configured index and registry."""
        hosts = [h for h in (urlsplit(u).hostname for u in (self.pip_index_url, self.npm_registry) if u) if h]
        return {"type": "limited", "allowed_hosts": hosts, "allow_package_managers": True}

    def script(self, target: str) -> str:
        """The bash script that installs everything into `target`."""
        # the shell starts in the build's scratch directory (/workspace, or the host path without binds)
        lines = ["set -eu", 'export HOME="$PWD" TMPDIR="$PWD/tmp"', 'mkdir -p "$TMPDIR"']
        if self.pip:
            index = ["--index-url", self.pip_index_url] if self.pip_index_url else []
            argv = [
                "python3", "-m", "pip", "install", "--quiet", "--no-cache-dir", "--disable-pip-version-check",
                "--no-input", "--no-warn-script-location", "--progress-bar", "off",
                "--target", f"{target}/python", *index, "--", *self.pip,
            ]  # fmt: skip
            lines.append(shlex.join(argv))
        if self.npm:
            registry = ["--registry", self.npm_registry] if self.npm_registry else []
            lines.append(f"mkdir -p {shlex.quote(target + '/node')}")
            argv = [
                "npm", "install", "--prefix", f"{target}/node", "--no-audit", "--no-fund", "--no-update-notifier",
                "--loglevel=error", *registry, "--", *self.npm,
            ]  # fmt: skip
            lines.append(shlex.join(argv))
        return "(\n" + "\n".join(lines) + "\n)\n"  # a subshell: `set -e` must not end the helper's shell


def recipe_env(recipe_dir: str = RECIPE_DIR) -> dict[str, str]:
    """What a sandbox with a template at `recipe_dir` needs to find its packages."""
    return {
        "PATH": f"{recipe_dir}/python/bin:{recipe_dir}/node/node_modules/.bin:{DEFAULT_PATH}",
        "PYTHONPATH": f"{recipe_dir}/python",
        "NODE_PATH": f"{recipe_dir}/node/node_modules",
    }


StartSandbox = Callable[[SandboxSpec], Awaitable[Sandbox]]


class Templates:
    """The templates under `root` (`<data dir>/sandboxes/templates`): find one, or build it once."""

    def __init__(
        self,
        root: Path,
        *,
        timeout: float = 600.0,
        binds: bool = True,
        pip_index_url: str | None = None,
        npm_registry: str | None = None,
    ) -> None:
        """`binds`: the backend binds `Mount`s (the build sees its directory at `RECIPE_DIR`); False for the
        unsafe backend, which builds straight into the host path. `pip_index_url`/`npm_registry`: where
        packages come from (None: pip's and npm's defaults, the public registries)."""
        self.root = root
        self.timeout = timeout
        self.binds = binds
        self.pip_index_url = pip_index_url
        self.npm_registry = npm_registry
        self.builds = 0
        """Templates this object built (tests and logs: a reused template does not count)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, tuple[float, str]] = {}

    def recipe_for(self, packages: Mapping[str, Sequence[str]]) -> Recipe | None:
        """The recipe of `config.packages` from this deployment's index and registry (`RecipeFailed`: refused)."""
        return Recipe.from_packages(packages, pip_index_url=self.pip_index_url, npm_registry=self.npm_registry)

    def path(self, recipe: Recipe) -> Path:
        return self.root / recipe.key

    def ready(self, recipe: Recipe) -> bool:
        return (self.path(recipe) / MARKER).is_file()

    def inside(self, recipe: Recipe) -> str:
        """Where a sandbox finds the template."""
        return RECIPE_DIR if self.binds else str(self.path(recipe))

    async def ensure(self, recipe: Recipe, start: StartSandbox) -> Path:
        """The finished template of `recipe`, built first if needed (`RecipeFailed` if that fails)."""
        if self.ready(recipe):
            return self.path(recipe)
        key = recipe.key
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self.ready(recipe):
                return self.path(recipe)
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < FAILURE_TTL:
                raise RecipeFailed(failed[1])
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
            async with _file_lock(self.root / f".{key}.lock"):
                if self.ready(recipe):  # another process built it meanwhile
                    return self.path(recipe)
                try:
                    await self._build(recipe, start)
                except RecipeFailed as e:
                    self._failed[key] = (time.monotonic(), str(e))
                    raise
            self._failed.pop(key, None)
            return self.path(recipe)

    async def _build(self, recipe: Recipe, start: StartSandbox) -> None:
        key = recipe.key
        await asyncio.to_thread(_sweep, self.root, key)
        build = self.root / f".build-{key}-{uuid.uuid4().hex[:8]}"
        # With binds the tree is built aside and renamed into place; the unsafe backend installs at the final
        # path (paths written into the tree stay right), which counts only once its marker is written.
        target = build / "recipe" if self.binds else self.path(recipe)
        inside = RECIPE_DIR if self.binds else str(target)
        began = time.monotonic()
        log.info("building environment recipe %s (pip: %s; npm: %s)", key, recipe.pip, recipe.npm)
        spec = SandboxSpec(
            session_id=recipe.build_id,
            workdir=str(build / "scratch" / "workspace"),
            networking=recipe.networking(),
            mounts=(Mount(str(target), RECIPE_DIR, readonly=False),) if self.binds else (),
        )
        sandbox: Sandbox | None = None
        try:
            await asyncio.to_thread(target.mkdir, parents=True)
            sandbox = await start(spec)
            result = await sandbox.execute("bash", {"command": recipe.script(inside)}, timeout=self.timeout)
            if result.is_error:
                output = "".join(str(b.get("text", "")) for b in result.content).strip()
                tail = output[-_OUTPUT_TAIL:]
                raise RecipeFailed(f"installing the environment's packages failed:\n{tail}")
            await sandbox.close()
            sandbox = None
            await asyncio.to_thread(_publish, recipe, target, self.path(recipe))
        except RecipeFailed:
            raise
        except Exception as e:
            raise RecipeFailed(f"installing the environment's packages failed: {e}") from e
        finally:
            if sandbox is not None:
                await sandbox.close()
            await asyncio.to_thread(shutil.rmtree, build, True)
        self.builds += 1
        log.info("built environment recipe %s in %.1fs", key, time.monotonic() - began)


def _publish(recipe: Recipe, built: Path, final: Path) -> None:
    """Hand the finished tree to the server's user, readable by every sandbox uid, and move it in place."""
    root = os.geteuid() == 0
    for dirpath, dirnames, filenames in os.walk(built):
        for name in [*dirnames, *filenames, None]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            if root:
                os.lchown(path, 0, 0)
            if not os.path.islink(path):
                os.chmod(path, (st.st_mode & 0o755) | 0o444 | (0o111 if st.st_mode & 0o111 else 0))
    marker = {"recipe": dataclasses.asdict(recipe), "built_at": time.time()}
    (built / MARKER).write_text(json.dumps(marker))
    os.chmod(built / MARKER, 0o444)
    os.chmod(built, 0o755)
    if built != final:
        os.replace(built, final)


def _sweep(root: Path, key: str) -> None:
    """Remove what a build of `key` that died left behind (we hold its lock, so none is running)."""
    for entry in root.glob(f".build-{key}-*"):
        shutil.rmtree(entry, ignore_errors=True)
    final = root / key
    if final.exists() and not (final / MARKER).is_file():
        shutil.rmtree(final, ignore_errors=True)


@contextlib.asynccontextmanager
async def _file_lock(path: Path):  # type: ignore[no-untyped-def]
    """An exclusive `flock` on `path`, polled so that waiting stays cancellable."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock
