"""File operations: store an upload (bytes on disk, metadata in the database), open for download, delete."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from ..config import Settings
from ..errors import ApiError, InvalidRequest, NotFound
from ..ids import new_id
from ..schemas.common import format_timestamp
from ..schemas.files import (
    EXPIRES_MAX_SECONDS,
    EXPIRES_MIN_SECONDS,
    FileMetadata,
    clean_filename,
    clean_mime_type,
)
from ..store.files import FileBlobs
from ..store.store import Store

__all__ = ["FileExpired", "Upload", "blobs_for", "delete_file", "file_size", "open_file", "store_upload"]


@dataclass
class Upload:
    """A received `file` part, complete in a temp file, plus the request's other fields."""

    temp: Path
    file: IO[bytes]
    size: int
    filename: str | None
    content_type: str | None
    fields: dict[str, str] = field(default_factory=dict)


class FileExpired(NotFound):
    """Download of a file whose `expires_at` has passed (`error_code` `file_expired`)."""

    def __init__(self, file_id: str, expired_at: datetime) -> None:
        ApiError.__init__(
            self,
            f"file {file_id} expired at {format_timestamp(expired_at)}; its content is no longer available",
            code="file_expired",
        )


def blobs_for(settings: Settings) -> FileBlobs:
    return FileBlobs(Path(settings.data_dir) / "files")


def _expires_in(fields: dict[str, str]) -> int | None:
    raw = fields.get("expires_in_seconds")
    if raw is None:
        return None
    try:
        seconds = int(raw.strip())
    except ValueError:
        raise InvalidRequest("expires_in_seconds: must be an integer") from None
    if not EXPIRES_MIN_SECONDS <= seconds <= EXPIRES_MAX_SECONDS:
        raise InvalidRequest(
            f"expires_in_seconds: must be between {EXPIRES_MIN_SECONDS} and {EXPIRES_MAX_SECONDS}, got {seconds}"
        )
    return seconds


async def store_upload(store: Store, blobs: FileBlobs, upload: Upload) -> FileMetadata:
    """Validate, move the bytes into place, then record the metadata. The temp file is gone afterwards
    whatever happens; a failure leaves no file behind."""
    published: str | None = None
    try:
        expires_in = _expires_in(upload.fields)
        mime_type = clean_mime_type(upload.content_type, upload.filename)
        now = datetime.now(UTC)
        meta = FileMetadata(
            id=new_id("file"),
            filename=clean_filename(upload.filename, mime_type),
            mime_type=mime_type,
            size_bytes=upload.size,
            created_at=now,
            expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        )
        await asyncio.to_thread(blobs.publish, upload.temp, upload.file, meta.id)
        published = meta.id
        return await store.files.create(meta)
    except BaseException:
        await asyncio.to_thread(blobs.discard, upload.temp, upload.file)
        if published is not None:
            await asyncio.to_thread(blobs.remove, published)
        raise


async def open_file(store: Store, blobs: FileBlobs, file_id: str) -> tuple[FileMetadata, IO[bytes]]:
    """The metadata and an open handle on the bytes (the caller closes it). Expired files are refused."""
    meta = await store.files.get(file_id)
    if meta.expires_at is not None and meta.expires_at <= datetime.now(UTC):
        raise FileExpired(file_id, meta.expires_at)
    try:
        handle = await asyncio.to_thread(blobs.open, file_id)
    except FileNotFoundError:  # deleted meanwhile
        raise NotFound("file", file_id) from None
    return meta, handle


async def delete_file(store: Store, blobs: FileBlobs, file_id: str) -> None:
    """The row goes first: a crash in between leaves only unreferenced bytes, never a file without them.
    Downloads already streaming keep their open handle."""
    await store.files.delete(file_id)
    await asyncio.to_thread(blobs.remove, file_id)


def file_size(handle: IO[bytes]) -> int:
    return os.fstat(handle.fileno()).st_size
