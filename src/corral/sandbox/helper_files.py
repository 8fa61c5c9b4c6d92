"""The file tools of the in-sandbox helper: read, write, edit, glob, grep (loaded by `helper.py`).

Like `helper.py` this runs inside the sandbox on the image's Python (3.8+), stdlib only, and is
bind-mounted next to it. Paths resolve against the workdir (/workspace); results and error texts follow
the SDK's reference toolset (`anthropic/lib/tools/agent_toolset.py`).
"""

from __future__ import annotations

import os
import stat
import sys
from itertools import islice

TEXT_LIMIT = 256 * 1024
IMAGE_B64_LIMIT = 5 * 1024 * 1024
PDF_LIMIT = 20 * 1024 * 1024
GREP_LIMIT = 100 * 1024
GREP_MAX_LINE = 2000
GLOB_LIMIT = 200
WALK_MAX = 50_000
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".pdf": "application/pdf",
}


class ToolError(Exception):
    """A tool-level failure: becomes an `is_error` result with this message."""


def fs_reason(e: OSError) -> str:
    """A stable phrase for an OSError (the model sees the same wording everywhere)."""
    if isinstance(e, FileNotFoundError):
        return "no such file or directory"
    if isinstance(e, NotADirectoryError):
        return "not a directory"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileExistsError):
        return "file already exists"
    return (e.strerror or "i/o error").lower()


def arg(inp: dict, key: str, kind: type, required: bool = False):
    """`inp[key]` checked against `kind` (the host validates too; this keeps the helper safe alone)."""
    value = inp.get(key)
    if value is None:
        if required:
            raise ToolError(f"{key} is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ToolError(f"{key} must be a {kind.__name__}")
    return value


class FileTools:
    """`guard(op, timeout, fn)` runs a tree walk so that an interrupt or the deadline can abort it."""

    def __init__(self, workdir: str, guard) -> None:
        self.workdir = workdir
        self.guard = guard

    def resolve(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.workdir, path))

    def open_regular(self, op: str, file_path: str, limit: int | None):
        """Open for reading without blocking on a FIFO; reject non-regular and oversized files."""
        try:
            fd = os.open(self.resolve(file_path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise ToolError(f"{op}: {file_path}: {fs_reason(e)}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ToolError(f"{op}: {file_path}: not a regular file")
        if limit is not None and st.st_size > limit:
            os.close(fd)
            if op == "edit":
                raise ToolError(
                    f"edit: {file_path} is {st.st_size} bytes, exceeds {limit}-byte limit. "
                    "The edit tool loads the whole file and cannot modify a file this large."
                )
            raise ToolError(
                f"read: {file_path} is {st.st_size} bytes, exceeds {limit}-byte limit. Use the "
                "view_range parameter to read specific line ranges, e.g. view_range: [1, 500]."
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read(self, inp: dict, timeout: float):
        file_path = arg(inp, "file_path", str, required=True)
        view = inp.get("view_range")
        if view is not None and (
            not isinstance(view, list)
            or len(view) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in view)
        ):
            raise ToolError("read: view_range must be [start_line, end_line]")
        media = MEDIA_TYPES.get(os.path.splitext(file_path)[1].lower())
        if media is not None:
            if view:
                raise ToolError("read: view_range is not supported for image/PDF files")
            return self.read_binary(file_path, media)
        with self.open_regular("read", file_path, None if view else TEXT_LIMIT) as f:
            raw = line_range(f, file_path, view[0], view[1]) if view else f.read(TEXT_LIMIT + 1)
        if len(raw) > TEXT_LIMIT:
            raise ToolError(f"read: {file_path} grew past the {TEXT_LIMIT}-byte limit while reading")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(
                f"read: {file_path}: not valid UTF-8 text (binary files are only supported for image/PDF extensions)"
            ) from None

    def read_binary(self, file_path: str, media: str) -> dict:
        """An image/document content block; the caps are the API's (5 MiB base64 image, 20 MiB PDF)."""
        import base64

        limit = PDF_LIMIT if media == "application/pdf" else IMAGE_B64_LIMIT // 4 * 3
        with self.open_regular("read", file_path, None) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise ToolError(f"read: {file_path} is {size} bytes, exceeds {limit}-byte limit for image/PDF files.")
            data = base64.standard_b64encode(f.read(limit + 1)).decode("ascii")
        kind = "document" if media == "application/pdf" else "image"
        return {"type": kind, "source": {"type": "base64", "media_type": media, "data": data}}

    def write(self, inp: dict, timeout: float) -> str:
        file_path = arg(inp, "file_path", str, required=True)
        data = arg(inp, "content", str, required=True).encode("utf-8", "surrogatepass")
        path = self.resolve(file_path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise ToolError(f"write: {file_path}: {fs_reason(e)}") from None
        return f"wrote {len(data)} bytes to {file_path}"

    def edit(self, inp: dict, timeout: float) -> str:
        file_path = arg(inp, "file_path", str, required=True)
        old, new = arg(inp, "old_string", str, required=True), arg(inp, "new_string", str, required=True)
        replace_all = bool(arg(inp, "replace_all", bool))
        if old == "":
            raise ToolError("edit: old_string must not be empty")
        with self.open_regular("edit", file_path, TEXT_LIMIT) as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"edit: {file_path}: not valid UTF-8 text (cannot edit binary files)") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(f"edit: old_string not found in {file_path}")
        if count > 1 and not replace_all:
            raise ToolError(f"edit: old_string appears {count} times in {file_path} (must be unique)")
        updated = text.replace(old, new) if replace_all else text.replace(old, new, 1)
        try:
            with open(self.resolve(file_path), "wb") as f:
                f.write(updated.encode("utf-8", "surrogatepass"))
        except OSError as e:
            raise ToolError(f"edit: {file_path}: {fs_reason(e)}") from None
        return f"edited {file_path} ({count if replace_all else 1} replacement(s))"

    def glob(self, inp: dict, timeout: float) -> str:
        from pathlib import Path, PurePosixPath

        pattern, path = arg(inp, "pattern", str, required=True), arg(inp, "path", str)
        if os.path.isabs(pattern):
            raise ToolError("glob: absolute pattern not permitted; pass a relative pattern (and optionally path)")
        if ".." in PurePosixPath(pattern).parts:
            raise ToolError("glob: '..' is not permitted in the pattern")
        root = Path(self.resolve(path) if path else self.workdir)
        if path and not root.is_dir():
            reason = "not a directory" if root.exists() else "no such file or directory"
            raise ToolError(f"glob: {path}: {reason}")

        def walk() -> str:
            try:
                found = list(islice(root.glob(pattern), WALK_MAX))
            except (ValueError, OSError) as e:
                raise ToolError(f"glob: {e}") from None
            if not found:
                return "no matches"
            found.sort(key=mtime, reverse=True)
            return "\n".join(str(p) for p in found[:GLOB_LIMIT])

        return self.guard("glob", timeout, walk)

    def grep(self, inp: dict, timeout: float) -> str:
        pattern, path = arg(inp, "pattern", str, required=True), arg(inp, "path", str)
        import re  # here, not at the top: the helper loads this module on every sandbox's cold start

        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ToolError(f"grep: invalid regex: {e}") from None
        root = self.resolve(path) if path else self.workdir
        if not os.path.exists(root):
            raise ToolError(f"grep: {path}: no such file or directory")
        return self.guard("grep", timeout, lambda: grep_walk(rx, root))


def line_range(f, file_path: str, first: int, last: int) -> bytes:
    """Lines [first, last] (1-indexed, inclusive; last <= 0 = EOF), streamed, capped at TEXT_LIMIT."""
    start, end = max(0, first - 1), (last if last > 0 else sys.maxsize)
    out, last_i = bytearray(), -1
    for i, line in enumerate(f):
        if i >= end:
            break
        if i < start:
            continue
        out += line
        last_i = i
        if len(out) > TEXT_LIMIT:
            if end - start == 1:
                raise ToolError(
                    f"read: line {start + 1} of {file_path} alone exceeds {TEXT_LIMIT}-byte limit. "
                    "The read tool cannot return part of a line, so view_range cannot narrow this "
                    "further."
                )
            raise ToolError(
                f"read: view_range [{first}, {last}] of {file_path} exceeds {TEXT_LIMIT}-byte "
                "limit. Narrow the view_range to read a smaller portion."
            )
    if last_i == end - 1 and out.endswith(b"\n"):
        del out[-1:]
    return bytes(out)


def mtime(p) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def grep_walk(rx, root: str) -> str:  # rx: a compiled re.Pattern
    """ripgrep-style `path:line:text`; skips symlinks, binaries, .git/node_modules and over-long lines."""
    hits: list[str] = []
    budget = GREP_LIMIT

    def scan(full: str) -> bool:
        nonlocal budget
        try:
            with open(full, "rb") as f:
                if b"\x00" in f.read(512):
                    return True
                f.seek(0)
                for i, raw in enumerate(f, 1):
                    if len(raw) > GREP_MAX_LINE:  # `re` backtracks: bound the work per line
                        continue
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if rx.search(line):
                        hit = f"{full}:{i}:{line}"
                        budget -= len(hit.encode("utf-8", "replace")) + 1
                        if budget < 0:
                            hits.append(f"[output truncated at {GREP_LIMIT} bytes]")
                            return False
                        hits.append(hit)
        except OSError:
            pass
        return True

    if os.path.isfile(root):
        scan(root)
    else:
        seen = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in (".git", "node_modules") and not os.path.islink(os.path.join(dirpath, d))
            )
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                seen += 1
                if seen > WALK_MAX or not scan(full):
                    return "\n".join(hits)
    return "\n".join(hits) if hits else "no matches"
