"""Files: uploaded bytes kept by the server, described by `FileMetadata` (`file_…` ids)."""

from __future__ import annotations

import mimetypes
import re
from typing import Literal

from .common import Response, Timestamp

__all__ = [
    "EXPIRES_MAX_SECONDS",
    "EXPIRES_MIN_SECONDS",
    "FileMetadata",
    "FileScope",
    "clean_filename",
    "clean_mime_type",
]

EXPIRES_MIN_SECONDS = 3600
EXPIRES_MAX_SECONDS = 7_776_000
_OCTET = "application/octet-stream"
# The built-in tables only (not /etc/mime.types), so every machine guesses the same.
_TYPES = mimetypes.MimeTypes()
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


class FileScope(Response):
    type: Literal["session"] = "session"
    id: str


class FileMetadata(Response):
    type: Literal["file"] = "file"
    id: str
    filename: str
    mime_type: str
    size_bytes: int
    created_at: Timestamp
    downloadable: bool = True
    expires_at: Timestamp | None = None
    scope: FileScope | None = None


def clean_mime_type(content_type: str | None, filename: str | None) -> str:
    """The part's media type (parameters dropped, lower case); guessed from the name when it is absent,
    malformed or `application/octet-stream`."""
    given = (content_type or "").split(";", 1)[0].strip().lower()
    if given and given != _OCTET and _MIME.match(given):
        return given
    guessed = _TYPES.guess_type(filename)[0] if filename else None
    return guessed or (given if given and _MIME.match(given) else _OCTET)


def clean_filename(raw: str | None, mime_type: str) -> str:
    """Only the last path component is kept; none (or `.`/`..`) becomes `unnamed` plus the extension
    of the media type, when one is known."""
    name = re.split(r"[/\\]", raw or "")[-1].strip()
    if name in ("", ".", ".."):
        return "unnamed" + (_TYPES.guess_extension(mime_type) or "")
    return name
