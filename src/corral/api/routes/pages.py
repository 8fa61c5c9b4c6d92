"""List response shapes: `{"data": [...], "next_page": ...}` (sessions add `prev_page`)."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class PageOut(BaseModel, Generic[T]):
    data: list[T]
    next_page: str | None = None


class PageWithPrev(PageOut[T], Generic[T]):
    prev_page: str | None = None


class Deleted(BaseModel):
    id: str
    type: str
