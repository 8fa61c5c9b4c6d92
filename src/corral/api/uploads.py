"""Streaming `multipart/form-data` for `POST /v1/files`: the `file` part goes straight to a temp file.

The body is parsed as it arrives (python-multipart's push parser, fed in batches off the event loop),
so an upload never sits in memory whole, and one over the size limit stops being stored the moment
it crosses the limit. On any failure the temp file is removed and the rest of the body (up to
`_DRAIN_MAX`) is read and dropped, so a client that sends the whole body before reading the answer
gets the error response rather than a reset connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from ..errors import ApiError, InvalidRequest, RequestTooLarge
from ..service.files import Upload
from ..store.files import FileBlobs

__all__ = ["receive_upload"]

FIELDS = ("file", "expires_in_seconds")
_BATCH = 1 << 20  # bytes handed to the parser (and the disk) per thread hop
_MAX_HEADER_BYTES = 16 * 1024  # per part
_MAX_FIELD_BYTES = 64  # non-file fields are small numbers
_DRAIN_MAX = 64 << 20  # the rest of a refused body read and dropped before giving up on it
_OVERHEAD = 1 << 20  # multipart framing allowed beyond the file itself before Content-Length alone refuses


class _Parts:
    """python-multipart callbacks: collect small fields, write the file part to a temp file."""

    def __init__(self, blobs: FileBlobs, max_bytes: int) -> None:
        self.blobs = blobs
        self.max_bytes = max_bytes
        self.upload: Upload | None = None
        self.fields: dict[str, str] = {}
        self.ended = False
        self._name = self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._field: str | None = None
        self._data = bytearray()
        self._writing: Upload | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers, self._header_bytes, self._data = {}, 0, bytearray()
        self._field, self._writing = None, None

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise InvalidRequest("multipart part headers are too long")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name = self._value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("each multipart part needs `Content-Disposition: form-data; name=...`")
        name = options[b"name"].decode("latin-1")
        if name not in FIELDS:
            raise InvalidRequest(f"{name}: unknown field")
        if name in self.fields or (name == "file" and self.upload is not None):
            raise InvalidRequest(f"{name}: given more than once")
        self._field = name
        if name == "file":
            filename = options.get(b"filename")
            content_type = self._headers.get(b"content-type")
            temp, handle = self.blobs.create_temp()
            self.upload = self._writing = Upload(
                temp=temp,
                file=handle,
                size=0,
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=content_type.decode("latin-1") if content_type is not None else None,
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writing is not None:
            self._writing.size += end - start
            if self._writing.size > self.max_bytes:
                raise RequestTooLarge(f"file is larger than the {self.max_bytes}-byte limit")
            self._writing.file.write(data[start:end])
            return
        self._data += data[start:end]
        if len(self._data) > _MAX_FIELD_BYTES:
            raise InvalidRequest(f"{self._field}: value too long")

    def on_part_end(self) -> None:
        if self._field is not None and self._writing is None:
            self.fields[self._field] = self._data.decode("utf-8", "replace")
        self._writing = None

    def on_end(self) -> None:
        self.ended = True


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read and drop what is left of the body, up to `_DRAIN_MAX` (past that the connection is closed)."""
    left = _DRAIN_MAX
    with contextlib.suppress(Exception):
        async for chunk in chunks:
            left -= len(chunk)
            if left < 0:
                break


async def receive_upload(request: Request, blobs: FileBlobs, max_bytes: int) -> Upload:
    """Parse the request's multipart body; the `file` part ends up complete in a temp file (the caller
    publishes or discards it). Malformed bodies are 400, a file over `max_bytes` is 413."""
    chunks = request.stream().__aiter__()
    parts = _Parts(blobs, max_bytes)
    try:
        ctype, params = parse_options_header(request.headers.get("content-type"))
        if ctype != b"multipart/form-data" or not params.get(b"boundary"):
            raise InvalidRequest("the body must be multipart/form-data (with a boundary) holding a `file` part")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes + _OVERHEAD:
            raise RequestTooLarge(f"file is larger than the {max_bytes}-byte limit")
        try:
            parser = MultipartParser(params[b"boundary"], parts.callbacks())  # type: ignore[arg-type]
            batch = bytearray()
            async for chunk in chunks:
                batch += chunk
                if len(batch) >= _BATCH:
                    await asyncio.to_thread(parser.write, bytes(batch))
                    batch.clear()
            if batch:
                await asyncio.to_thread(parser.write, bytes(batch))
        except FormParserError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        except ClientDisconnect:  # nobody to answer; an ApiError keeps it out of the error log
            raise InvalidRequest("the client disconnected before the upload was complete") from None
        if not parts.ended:
            raise InvalidRequest("malformed multipart body: it ends before the closing boundary")
        if parts.upload is None:
            raise InvalidRequest("file: field required")
        parts.upload.fields = parts.fields
        return parts.upload
    except BaseException as exc:
        if parts.upload is not None:
            await asyncio.to_thread(blobs.discard, parts.upload.temp, parts.upload.file)
        if isinstance(exc, ApiError):
            await _drain(chunks)
        raise
