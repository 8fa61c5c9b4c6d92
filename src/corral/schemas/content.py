"""Content blocks carried by events: text, image, document, redacted, search result."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AgentMessageBlock",
    "DocumentBlock",
    "ImageBlock",
    "RedactedBlock",
    "ResultBlock",
    "SearchResultBlock",
    "TextBlock",
    "UserMessageBlock",
]


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextBlock(Block):
    type: Literal["text"] = "text"
    text: str


class Base64ImageSource(Block):
    type: Literal["base64"]
    media_type: Literal["image/png", "image/jpeg", "image/gif", "image/webp"]
    data: str


class URLSource(Block):
    type: Literal["url"]
    url: str


class FileSource(Block):
    type: Literal["file"]
    file_id: str


class ImageBlock(Block):
    type: Literal["image"] = "image"
    source: Annotated[Base64ImageSource | URLSource | FileSource, Field(discriminator="type")]


class Base64PDFSource(Block):
    type: Literal["base64"]
    media_type: Literal["application/pdf"]
    data: str


class PlainTextSource(Block):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class DocumentBlock(Block):
    type: Literal["document"] = "document"
    source: Annotated[Base64PDFSource | PlainTextSource | URLSource | FileSource, Field(discriminator="type")]
    title: str | None = None
    context: str | None = None


class RedactedBlock(Block):
    type: Literal["redacted"] = "redacted"


class SearchResultCitations(Block):
    enabled: bool


class SearchResultBlock(Block):
    type: Literal["search_result"] = "search_result"
    source: str
    title: str
    content: list[TextBlock]
    citations: SearchResultCitations


UserMessageBlock = Annotated[TextBlock | ImageBlock | DocumentBlock | RedactedBlock, Field(discriminator="type")]
AgentMessageBlock = Annotated[TextBlock | RedactedBlock, Field(discriminator="type")]
ResultBlock = Annotated[TextBlock | ImageBlock | DocumentBlock | SearchResultBlock, Field(discriminator="type")]
