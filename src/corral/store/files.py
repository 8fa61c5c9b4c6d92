"""Files: metadata rows in the database (`FileRepo`) and the bytes on local disk (`FileBlobs`)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any

from sqlalchemy import insert, select

from ..errors import NotFound
from ..schemas.common import to_micros
from ..schemas.files import FileMetadata
from . import tables as t
from .db import Database
from .pages import Cursor, Page, keyset, make_page
from .resources import dump

__all__ = ["FileBlobs", "FileRepo"]


class FileRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, meta: FileMetadata) -> FileMetadata:
        scope_id = meta.scope.id if meta.scope else None
        async with self.db.write() as conn:
            await conn.execute(
                insert(t.files).values(
                    id=meta.id, created_at=to_micros(meta.created_at), scope_id=scope_id, body=dump(meta)
                )
            )
        return meta

    async def get(self, file_id: str) -> FileMetadata:
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.files.c.body).where(t.files.c.id == file_id))).first()
        if row is None:
            raise NotFound("file", file_id)
        return FileMetadata.model_validate_json(row.body)

    async def delete(self, file_id: str) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(t.files.delete().where(t.files.c.id == file_id))
        if result.rowcount != 1:
            raise NotFound("file", file_id)

    async def list(
        self, *, limit: int, page: str | None, ids: list[str] | None = None, scope_id: str | None = None
    ) -> Page:
        """Newest first. With `ids`, one page of those files that exist (no cursor)."""
        cursor = Cursor.decode(page, "desc") if page else None
        query = select(t.files.c.id, t.files.c.created_at, t.files.c.body)
        if ids is not None:
            query = query.where(t.files.c.id.in_(ids))
        if scope_id is not None:
            query = query.where(t.files.c.scope_id == scope_id)
        async with self.db.read() as conn:
            rows = list((await conn.execute(keyset(query, t.files, "desc", cursor, limit))).all())
        result = make_page(rows, "desc", cursor, limit)
        result.rows = [FileMetadata.model_validate_json(r.body) for r in result.rows]
        return result


class FileBlobs:
    """The bytes of each file in `<root>/<file id>`. New files are written under `<root>/.tmp/` and
    renamed into place once complete, so a crash never leaves a partial file under a file's name.
    Blocking calls: run them off the event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / ".tmp"

    def create_temp(self) -> tuple[Path, IO[bytes]]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        path = self.tmp / f"{secrets.token_hex(12)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return path, os.fdopen(fd, "wb")

    def publish(self, temp: Path, file: IO[bytes], file_id: str) -> None:
        """Flush and sync the temp file, then rename it to its final name (atomic on one filesystem)."""
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(temp, self.path(file_id))
        _fsync_dir(self.root)

    def discard(self, temp: Path, file: IO[bytes]) -> None:
        with contextlib.suppress(OSError):
            file.close()
        temp.unlink(missing_ok=True)

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    def open(self, file_id: str) -> IO[bytes]:
        """The stored bytes (`FileNotFoundError` if they are gone)."""
        return open(self.path(file_id), "rb")  # the caller streams and closes it

    def remove(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd: Any = None
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
    except OSError:
        pass
    finally:
        if fd is not None:
            os.close(fd)
