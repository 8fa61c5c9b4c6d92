"""API keys made with `corral keys create`: only a hash is stored, the key is shown once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from ..ids import new_id
from ..schemas.common import now_micros
from . import tables as t
from .db import Database

__all__ = ["ApiKeyRepo", "KeyInfo", "hash_key"]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    created_at: int
    revoked_at: int | None


class ApiKeyRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str) -> tuple[KeyInfo, str]:
        """Make a key; returns its record and the secret (not recoverable later)."""
        secret = "crl-" + secrets.token_urlsafe(32)
        info = KeyInfo(id=new_id("api_key"), name=name, created_at=now_micros(), revoked_at=None)
        async with self.db.write() as conn:
            await conn.execute(
                insert(t.api_keys).values(id=info.id, name=name, key_hash=hash_key(secret), created_at=info.created_at)
            )
        return info, secret

    async def verify(self, key: str) -> bool:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(t.api_keys.c.id).where(
                        t.api_keys.c.key_hash == hash_key(key), t.api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        return row is not None

    async def any_active(self) -> bool:
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(t.api_keys.c.id).where(t.api_keys.c.revoked_at.is_(None)).limit(1))
            ).first()
        return row is not None

    async def list(self) -> list[KeyInfo]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.api_keys).order_by(t.api_keys.c.created_at))).all()
        return [KeyInfo(r.id, r.name, r.created_at, r.revoked_at) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now_micros())
            )
        return result.rowcount == 1
