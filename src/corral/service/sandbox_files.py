"""The Files side of sandboxes: where a file resource's bytes are, and outputs stored as session-scoped Files.

The sandbox package knows no store (`sandbox/runner.py` takes a `SessionFiles`); this is that object.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from ..ids import new_id
from ..schemas.files import FileMetadata, FileScope, clean_filename, clean_mime_type
from ..store.files import FileBlobs
from ..store.store import Store

__all__ = ["SandboxFiles"]


class SandboxFiles:
    def __init__(self, store: Store, blobs: FileBlobs, *, max_bytes: int) -> None:
        self.store = store
        self.blobs = blobs
        self.max_bytes = max_bytes

    def source(self, file_id: str) -> Path | None:
        """The stored bytes of `file_id`, or None when they are gone (deleted). Blocking."""
        path = self.blobs.path(file_id)
        return path if path.is_file() else None

    async def save_output(self, session_id: str, filename: str, fd: int) -> FileMetadata:
        """Copy what `fd` holds into a new File scoped to `session_id` (bytes first, then the row)."""
        temp, handle = await asyncio.to_thread(self.blobs.create_temp)
        try:
            size = await asyncio.to_thread(_copy_fd, fd, handle)
            mime_type = clean_mime_type(None, filename)
            meta = FileMetadata(
                id=new_id("file"),
                filename=clean_filename(filename, mime_type),
                mime_type=mime_type,
                size_bytes=size,
                created_at=datetime.now(UTC),
                scope=FileScope(id=session_id),
            )
            await asyncio.to_thread(self.blobs.publish, temp, handle, meta.id)
        except BaseException:
            await asyncio.to_thread(self.blobs.discard, temp, handle)
            raise
        try:
            return await self.store.files.create(meta)
        except BaseException:
            await asyncio.to_thread(self.blobs.remove, meta.id)
            raise


def _copy_fd(fd: int, handle: object) -> int:
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as source:
        shutil.copyfileobj(source, handle)  # type: ignore[misc]
        return source.tell()
