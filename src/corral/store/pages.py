"""Keyset pagination: opaque cursors over `(created_at, id)` that stay correct while rows are added."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, and_, or_

__all__ = ["Cursor", "InvalidCursor", "Page", "keyset"]


class InvalidCursor(ValueError):
    """A `page` token that was not made by us, or was made for another ordering."""


@dataclass(frozen=True)
class Cursor:
    created_at: int
    id: str
    order: Literal["asc", "desc"]
    direction: Literal["next", "prev"] = "next"

    def encode(self) -> str:
        raw = json.dumps([self.created_at, self.id, self.order, self.direction], separators=(",", ":"))
        return "page_" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, order: str) -> Cursor:
        try:
            if not token.startswith("page_"):
                raise ValueError
            raw = token[5:] + "=" * (-len(token[5:]) % 4)
            created_at, id_, cursor_order, direction = json.loads(base64.urlsafe_b64decode(raw))
            cursor = cls(int(created_at), str(id_), cursor_order, direction)
        except Exception as exc:
            raise InvalidCursor(f"page {token[:80]!r} is not a valid page token") from exc
        if cursor.order != order:
            raise InvalidCursor(f"page token was made for order={cursor.order}, not order={order}")
        return cursor


@dataclass
class Page:
    rows: list[Any]
    next_page: str | None
    prev_page: str | None = None


def keyset(
    query: Select[Any], table: Any, order: Literal["asc", "desc"], cursor: Cursor | None, limit: int
) -> Select[Any]:
    """Apply ordering, the cursor's position and a one-extra-row limit (to know whether more exist)."""
    created, ident = table.c.created_at, table.c.id
    forward_desc = order == "desc"
    if cursor is not None and cursor.direction == "prev":
        forward_desc = not forward_desc
    if cursor is not None:
        if forward_desc:
            query = query.where(or_(created < cursor.created_at, and_(created == cursor.created_at, ident < cursor.id)))
        else:
            query = query.where(or_(created > cursor.created_at, and_(created == cursor.created_at, ident > cursor.id)))
    ordering = (created.desc(), ident.desc()) if forward_desc else (created.asc(), ident.asc())
    return query.order_by(*ordering).limit(limit + 1)


def make_page(rows: list[Any], order: Literal["asc", "desc"], cursor: Cursor | None, limit: int) -> Page:
    """Cut the extra row, restore display order for backward pages, and build both cursors."""
    more = len(rows) > limit
    rows = rows[:limit]
    backward = cursor is not None and cursor.direction == "prev"
    if backward:
        rows.reverse()
    has_next = more if not backward else True
    has_prev = (cursor is not None) if not backward else more
    next_page = Cursor(rows[-1].created_at, rows[-1].id, order).encode() if rows and has_next else None
    prev_page = Cursor(rows[0].created_at, rows[0].id, order, "prev").encode() if rows and has_prev else None
    return Page(rows=rows, next_page=next_page, prev_page=prev_page)
