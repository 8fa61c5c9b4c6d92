"""`/v1/files`: upload (multipart, streamed to disk), list, metadata, download, delete.

The SDK sends no `anthropic-beta` header on these routes, so they need authentication only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import IO
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ...errors import InvalidRequest
from ...schemas.files import FileMetadata
from ...service.files import blobs_for, delete_file, file_size, open_file, store_upload
from ...store.store import Store
from ..deps import get_runtime, get_store
from ..query import parse_limit, query_list
from ..uploads import receive_upload
from .pages import Deleted, PageOut

router = APIRouter(prefix="/v1/files", tags=["files"])

MAX_IDS = 100
_CHUNK = 256 * 1024
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "expires_in_seconds": {"type": "integer", "minimum": 3600, "maximum": 7776000},
                },
            }
        }
    },
}


@router.post("", response_model=FileMetadata, openapi_extra={"requestBody": _UPLOAD_BODY})
async def upload(request: Request, store: Store = Depends(get_store)) -> FileMetadata:
    settings = get_runtime(request).settings
    blobs = blobs_for(settings)
    received = await receive_upload(request, blobs, settings.max_file_bytes)
    return await store_upload(store, blobs, received)


@router.get("", response_model=PageOut[FileMetadata])
async def list_files(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    scope_id: str | None = None,
    store: Store = Depends(get_store),
) -> PageOut[FileMetadata]:
    ids = list(dict.fromkeys(query_list(request, "ids")))
    if ids:
        if limit is not None or page is not None:
            raise InvalidRequest("ids cannot be combined with page or limit")
        if len(ids) > MAX_IDS:
            raise InvalidRequest(f"ids: at most {MAX_IDS} ids, got {len(ids)}")
        result = await store.files.list(limit=len(ids), page=None, ids=ids, scope_id=scope_id)
        return PageOut[FileMetadata](data=result.rows, next_page=None)
    result = await store.files.list(limit=parse_limit(limit, 20, 1000), page=page, scope_id=scope_id)
    return PageOut[FileMetadata](data=result.rows, next_page=result.next_page)


@router.get("/{file_id}", response_model=FileMetadata)
async def retrieve_metadata(file_id: str, store: Store = Depends(get_store)) -> FileMetadata:
    return await store.files.get(file_id)


@router.get("/{file_id}/content", response_class=StreamingResponse)
async def download(file_id: str, request: Request, store: Store = Depends(get_store)) -> StreamingResponse:
    meta, handle = await open_file(store, blobs_for(get_runtime(request).settings), file_id)
    headers = {
        "content-type": meta.mime_type,
        "content-length": str(file_size(handle)),
        "content-disposition": content_disposition(meta.filename),
    }
    return StreamingResponse(_chunks(handle), headers=headers)


@router.delete("/{file_id}", response_model=Deleted)
async def delete(file_id: str, request: Request, store: Store = Depends(get_store)) -> Deleted:
    await delete_file(store, blobs_for(get_runtime(request).settings), file_id)
    return Deleted(id=file_id, type="file_deleted")


async def _chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
    finally:
        handle.close()


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII `filename` and, when the name needs it, the exact UTF-8 `filename*`."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value
