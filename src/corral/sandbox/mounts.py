"""What a session's sandbox sees besides the system files: its binds, file resources and outputs directory.

Backend-neutral: `session_mounts(spec)` is the list every backend binds (bubblewrap here, gVisor the same
list), and the host-side layout of one session's directory `<home>` (`<root>/sessions/<id>`) is:

    <home>/workspace   read-write at /workspace (the agent's files)
    <home>/mnt         read-only at /mnt: copies of the file resources whose mount_path is under /mnt
    <home>/outputs     read-write at /mnt/session/outputs: what the agent leaves for the user (`outputs.py`)
    <home>/files/<id>  copies of file resources mounted elsewhere, each bound read-only at its mount_path

Why two kinds of file resources: a bind mount is fixed when the sandbox starts, but a file added to (or
removed from) a directory that is already bound shows up (or goes) at once. So resources under /mnt (the
default `/mnt/session/uploads/<file_id>`) live in the `<home>/mnt` tree and change under a running sandbox
before the next tool call; resources elsewhere are bound one by one, and the runner starts a new sandbox
when that set changes. The copies are owned by the server and mode 0444: the sandbox's uid cannot change
them, and the binds are read-only anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from corral.sandbox.base import FileMount, Mount, SandboxSpec

__all__ = [
    "DEFAULT_PATH",
    "MNT",
    "OUTPUTS",
    "WORKSPACE",
    "bound_files",
    "home_of",
    "live_files",
    "session_mounts",
    "sync_live_files",
    "write_bound_files",
]

WORKSPACE = "/workspace"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MNT = "/mnt"
OUTPUTS = "/mnt/session/outputs"
UPLOADS = "/mnt/session/uploads"
_MANIFEST = "mnt.json"


def home_of(spec: SandboxSpec) -> Path:
    """The session's host directory: the parent of its workdir."""
    return Path(spec.workdir).parent


def _under(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(root) and path != root


def live_files(files: Iterable[FileMount]) -> list[FileMount]:
    """The resources that live in the /mnt tree (they follow changes without a new sandbox)."""
    return [f for f in files if _under(f.target, MNT) and not PurePosixPath(f.target).is_relative_to(OUTPUTS)]


def bound_files(files: Iterable[FileMount]) -> tuple[FileMount, ...]:
    """The resources bound one by one when the sandbox starts (changing them needs a new sandbox)."""
    live = set(live_files(files))
    return tuple(f for f in files if f not in live)


def session_mounts(spec: SandboxSpec) -> list[Mount]:
    """Every bind of a session sandbox beyond the system files, in mount order (parents before children)."""
    home = home_of(spec)
    mounts = [
        Mount(spec.workdir, WORKSPACE, readonly=False),
        Mount(str(home / "mnt"), MNT),
        Mount(str(home / "outputs"), OUTPUTS, readonly=False),
    ]
    mounts += spec.mounts
    mounts += [Mount(str(home / "files" / f.resource_id), f.target) for f in bound_files(spec.files)]
    return mounts


def prepare_tree(home: Path) -> None:
    """Create `<home>/mnt` (with the outputs mount point) and `<home>/outputs`. Blocking."""
    (home / "mnt" / "session" / "outputs").mkdir(parents=True, exist_ok=True)
    (home / "mnt" / "session" / "uploads").mkdir(parents=True, exist_ok=True)
    (home / "outputs").mkdir(parents=True, exist_ok=True)
    for d in (home / "mnt", home / "mnt" / "session", home / "mnt" / "session" / "uploads"):
        os.chmod(d, 0o755)


def _copy(source: Path, dest: Path) -> None:
    """A read-only copy (temp + rename, so a running sandbox never sees half a file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o444)
    os.replace(tmp, dest)


def write_bound_files(home: Path, files: Iterable[FileMount], source: Callable[[str], Path | None]) -> list[str]:
    """Copy the resources bound one by one to `<home>/files/<resource id>` (before the sandbox starts).

    Returns what could not be provided (a file deleted meanwhile); the sandbox starts without it."""
    problems = []
    base = home / "files"
    wanted = {f.resource_id for f in files}
    if base.is_dir():
        for stale in os.listdir(base):
            if stale not in wanted:
                (base / stale).unlink(missing_ok=True)
    for f in files:
        dest = base / f.resource_id
        if dest.exists():
            continue
        src = source(f.file_id)
        if src is None:
            problems.append(f"file {f.file_id} (resource {f.resource_id}) no longer exists; {f.target} is missing")
            continue
        _copy(src, dest)
        os.chmod(base, 0o755)
    return problems


def sync_live_files(home: Path, files: Iterable[FileMount], source: Callable[[str], Path | None]) -> list[str]:
    """Make `<home>/mnt` hold exactly the live resources: copy new ones, remove deleted ones. Blocking.

    `<home>/mnt.json` (outside every sandbox) remembers which resource each path holds, so an unchanged set
    costs one small read. Returns what could not be provided."""
    tree = home / "mnt"
    manifest_path = home / _MANIFEST
    try:
        have: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        have = {}
    wanted = {f.target: f for f in live_files(files)}
    if {t: f.resource_id for t, f in wanted.items()} == have:
        return []
    if not tree.is_dir():
        prepare_tree(home)
    problems = []
    for target in set(have) - set(wanted):
        path = tree / PurePosixPath(target).relative_to(MNT)
        with contextlib.suppress(OSError):
            path.unlink()
        _prune(path.parent, tree)
        del have[target]
    for target, f in wanted.items():
        if have.get(target) == f.resource_id:
            continue
        src = source(f.file_id)
        if src is None:
            problems.append(f"file {f.file_id} (resource {f.resource_id}) no longer exists; {target} is missing")
            continue
        dest = tree / PurePosixPath(target).relative_to(MNT)
        _copy(src, dest)
        for parent in dest.parents:  # directories made for a custom mount_path must be enterable
            if parent == tree or not parent.is_relative_to(tree):
                break
            os.chmod(parent, 0o755)
        have[target] = f.resource_id
    tmp = manifest_path.with_suffix(".part")
    tmp.write_text(json.dumps(have))
    os.replace(tmp, manifest_path)
    return problems


def _prune(directory: Path, tree: Path) -> None:
    """Remove directories left empty by a removed resource (but never the layout's own)."""
    keep = {tree, tree / "session", tree / "session" / "uploads", tree / "session" / "outputs"}
    while directory.is_relative_to(tree) and directory not in keep:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
