"""Capturing what the agent leaves in /mnt/session/outputs as Files scoped to its session.

The directory is `<home>/outputs` on the host (bound read-write at /mnt/session/outputs, see `mounts.py`).
After every tool call and when the session goes idle, the runner scans it and hands each new or changed
regular file to a sink, which stores it as a File with `scope: {"type": "session", "id": …}` (listed by
`GET /v1/files?scope_id=<session id>`). A file that changes later is captured again as a new File; the
earlier one stays. `<home>/outputs.json` (outside every sandbox) remembers what was captured, by relative
path and (size, mtime, inode).

The directory is the agent's: it may plant symlinks or swap directories while we scan. The walk never
follows a symlink (`os.fwalk` with directory fds, files opened `O_NOFOLLOW` relative to them), only regular
files are read, and the file is read from the descriptor that was checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OutputSink", "capture_outputs"]

log = logging.getLogger(__name__)

OutputSink = Callable[[str, str, int], Awaitable[object]]
"""`(session id, file name, readable fd) -> stored file`: keeps the bytes read from `fd` (not closed by it)."""

MAX_PER_SCAN = 100
"""Files captured per scan at most (the rest on the next one)."""
_MANIFEST = "outputs.json"


@dataclass
class _Found:
    relpath: str
    signature: list[int]
    fd: int | None
    size: int


def _scan(home: Path, known: dict[str, list[int]], max_bytes: int) -> tuple[list[_Found], set[str]]:
    """Changed files (opened) and every path present. Blocking."""
    root = home / "outputs"
    changed: list[_Found] = []
    present: set[str] = set()
    if not root.is_dir() or root.is_symlink():
        return changed, present
    for dirpath, _dirs, files, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            present.add(rel)
            signature = [st.st_size, st.st_mtime_ns, st.st_ino]
            if known.get(rel) == signature or len(changed) >= MAX_PER_SCAN:
                continue
            if st.st_size > max_bytes:
                log.warning("output %s (%d bytes) is over the file size limit; not captured", rel, st.st_size)
                changed.append(_Found(rel, signature, None, st.st_size))
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError:
                continue
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or opened.st_ino != st.st_ino:
                os.close(fd)  # swapped between the stat and the open
                continue
            changed.append(_Found(rel, signature, fd, st.st_size))
    return changed, present


async def capture_outputs(home: Path, session_id: str, sink: OutputSink, *, max_bytes: int) -> list[str]:
    """Store every new or changed file of `<home>/outputs` through `sink`; returns the captured paths."""
    manifest_path = home / _MANIFEST
    try:
        known: dict[str, list[int]] = json.loads(await asyncio.to_thread(manifest_path.read_text))
    except (OSError, ValueError):
        known = {}
    changed, present = await asyncio.to_thread(_scan, home, known, max_bytes)
    captured = []
    try:
        for found in changed:
            if found.fd is not None:
                try:
                    await sink(session_id, os.path.basename(found.relpath), found.fd)
                except Exception:
                    log.exception("could not store output %s of session %s", found.relpath, session_id)
                    continue
                captured.append(found.relpath)
            known[found.relpath] = found.signature
    finally:
        for found in changed:
            if found.fd is not None:
                os.close(found.fd)
    known = {rel: sig for rel, sig in known.items() if rel in present}
    tmp = manifest_path.with_suffix(".part")
    await asyncio.to_thread(tmp.write_text, json.dumps(known))
    await asyncio.to_thread(os.replace, tmp, manifest_path)
    return captured
