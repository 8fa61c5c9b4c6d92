"""Vaults and their credentials. Credential secrets arrive here already encrypted (one Fernet token per
credential, the `secret` column); this module never sees a plaintext secret."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import Conflict, InvalidRequest, NotFound
from ..schemas.common import from_micros, to_micros
from ..schemas.vaults import Credential, Vault
from . import tables as t
from .db import Database
from .pages import Cursor, Page, keyset, make_page

__all__ = ["CredentialRepo", "VaultRepo"]

_VAULT_BODY = {"display_name", "metadata"}
_CREDENTIAL_BODY = {"display_name", "auth", "metadata"}


def _json(model: Any, fields: set[str]) -> str:
    return json.dumps(model.model_dump(mode="json", include=fields), separators=(",", ":"))


def _times(row: Any) -> dict[str, Any]:
    return {
        "created_at": from_micros(row.created_at),
        "updated_at": from_micros(row.updated_at),
        "archived_at": from_micros(row.archived_at) if row.archived_at else None,
    }


def _vault(row: Any) -> Vault:
    return Vault(id=row.id, **json.loads(row.body), **_times(row))


def _credential(row: Any) -> Credential:
    return Credential(id=row.id, vault_id=row.vault_id, **json.loads(row.body), **_times(row))


async def _vault_row(conn: AsyncConnection, vault_id: str, *, lock: bool = False) -> Any:
    query = select(t.vaults).where(t.vaults.c.id == vault_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound("vault", vault_id)
    return row


class VaultRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, vault: Vault) -> Vault:
        created = to_micros(vault.created_at)
        async with self.db.write() as conn:
            await conn.execute(
                insert(t.vaults).values(
                    id=vault.id, created_at=created, updated_at=created, body=_json(vault, _VAULT_BODY)
                )
            )
        return vault

    async def get(self, vault_id: str) -> Vault:
        async with self.db.read() as conn:
            return _vault(await _vault_row(conn, vault_id))

    async def update(self, vault_id: str, change: Callable[[Vault], Vault | None]) -> Vault:
        """Apply `change` to the stored vault in one write transaction (None: nothing to write)."""
        async with self.db.write() as conn:
            current = _vault(await _vault_row(conn, vault_id, lock=True))
            updated = change(current)
            if updated is None:
                return current
            await conn.execute(
                update(t.vaults)
                .where(t.vaults.c.id == vault_id)
                .values(updated_at=to_micros(updated.updated_at), body=_json(updated, _VAULT_BODY))
            )
        return updated

    async def archive(self, vault_id: str, now: Any) -> Vault:
        """Archive the vault and every active credential in it (their secrets are erased). Idempotent."""
        stamp = to_micros(now)
        async with self.db.write() as conn:
            row = await _vault_row(conn, vault_id, lock=True)
            if row.archived_at is not None:
                return _vault(row)
            await conn.execute(
                update(t.vaults).where(t.vaults.c.id == vault_id).values(archived_at=stamp, updated_at=stamp)
            )
            await conn.execute(
                update(t.vault_credentials)
                .where(t.vault_credentials.c.vault_id == vault_id, t.vault_credentials.c.archived_at.is_(None))
                .values(archived_at=stamp, updated_at=stamp, secret=None)
            )
            row = await _vault_row(conn, vault_id)
        return _vault(row)

    async def delete(self, vault_id: str) -> None:
        async with self.db.write() as conn:
            await _vault_row(conn, vault_id, lock=True)
            await conn.execute(t.vault_credentials.delete().where(t.vault_credentials.c.vault_id == vault_id))
            await conn.execute(t.vaults.delete().where(t.vaults.c.id == vault_id))

    async def list(self, *, limit: int, page: str | None, include_archived: bool) -> Page:
        order: Literal["desc"] = "desc"
        cursor = Cursor.decode(page, order) if page else None
        query = select(t.vaults)
        if not include_archived:
            query = query.where(t.vaults.c.archived_at.is_(None))
        async with self.db.read() as conn:
            rows = list((await conn.execute(keyset(query, t.vaults, order, cursor, limit))).all())
        result = make_page(rows, order, cursor, limit)
        result.rows = [_vault(r) for r in result.rows]
        return result


class CredentialRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, credential: Credential, target: str, secret: str, *, max_active: int) -> Credential:
        """Insert into an existing, active vault with room, unless `target` is taken by an active credential."""
        created = to_micros(credential.created_at)
        vault_id = credential.vault_id
        active = (t.vault_credentials.c.vault_id == vault_id, t.vault_credentials.c.archived_at.is_(None))
        try:
            async with self.db.write() as conn:
                row = await _vault_row(conn, vault_id, lock=True)
                if row.archived_at is not None:
                    raise InvalidRequest(f"vault {vault_id} is archived", code="vault_archived")
                count = (
                    await conn.execute(select(func.count()).select_from(t.vault_credentials).where(*active))
                ).scalar_one()
                if count >= max_active:
                    raise InvalidRequest(
                        f"vault {vault_id} already holds {count} active credentials (the most allowed is "
                        f"{max_active}); archive or delete one first",
                        code="credential_limit_reached",
                    )
                taken = (
                    await conn.execute(
                        select(t.vault_credentials.c.id).where(*active, t.vault_credentials.c.target == target)
                    )
                ).first()
                if taken is not None:
                    raise _target_taken(vault_id, target, taken.id)
                await conn.execute(
                    insert(t.vault_credentials).values(
                        id=credential.id,
                        vault_id=vault_id,
                        target=target,
                        created_at=created,
                        updated_at=created,
                        body=_json(credential, _CREDENTIAL_BODY),
                        secret=secret,
                    )
                )
        except IntegrityError as exc:  # a concurrent create took the target first
            raise _target_taken(vault_id, target, None) from exc
        return credential

    async def _row(self, conn: AsyncConnection, vault_id: str, credential_id: str, *, lock: bool = False) -> Any:
        query = select(t.vault_credentials).where(
            t.vault_credentials.c.id == credential_id, t.vault_credentials.c.vault_id == vault_id
        )
        row = (await conn.execute(query.with_for_update() if lock else query)).first()
        if row is None:
            await _vault_row(conn, vault_id)
            raise NotFound("credential", credential_id)
        return row

    async def get(self, vault_id: str, credential_id: str) -> Credential:
        async with self.db.read() as conn:
            return _credential(await self._row(conn, vault_id, credential_id))

    async def update(
        self,
        vault_id: str,
        credential_id: str,
        change: Callable[[Credential, str | None], tuple[Credential, str | None] | None],
    ) -> Credential:
        """Apply `change(current, encrypted secret)` in one write transaction; it returns the new
        credential and encrypted secret, or None when there is nothing to write."""
        async with self.db.write() as conn:
            row = await self._row(conn, vault_id, credential_id, lock=True)
            current = _credential(row)
            result = change(current, row.secret)
            if result is None:
                return current
            updated, secret = result
            await conn.execute(
                update(t.vault_credentials)
                .where(t.vault_credentials.c.id == credential_id)
                .values(
                    updated_at=to_micros(updated.updated_at),
                    body=_json(updated, _CREDENTIAL_BODY),
                    secret=secret,
                )
            )
        return updated

    async def archive(self, vault_id: str, credential_id: str, now: Any) -> Credential:
        """Archive and erase the secret; the target is free again. Idempotent."""
        stamp = to_micros(now)
        async with self.db.write() as conn:
            row = await self._row(conn, vault_id, credential_id, lock=True)
            if row.archived_at is None:
                await conn.execute(
                    update(t.vault_credentials)
                    .where(t.vault_credentials.c.id == credential_id)
                    .values(archived_at=stamp, updated_at=stamp, secret=None)
                )
                row = await self._row(conn, vault_id, credential_id)
        return _credential(row)

    async def delete(self, vault_id: str, credential_id: str) -> None:
        async with self.db.write() as conn:
            await self._row(conn, vault_id, credential_id, lock=True)
            await conn.execute(t.vault_credentials.delete().where(t.vault_credentials.c.id == credential_id))

    async def list(self, vault_id: str, *, limit: int, page: str | None, include_archived: bool) -> Page:
        order: Literal["desc"] = "desc"
        cursor = Cursor.decode(page, order) if page else None
        query = select(t.vault_credentials).where(t.vault_credentials.c.vault_id == vault_id)
        if not include_archived:
            query = query.where(t.vault_credentials.c.archived_at.is_(None))
        async with self.db.read() as conn:
            await _vault_row(conn, vault_id)
            rows = list((await conn.execute(keyset(query, t.vault_credentials, order, cursor, limit))).all())
        result = make_page(rows, order, cursor, limit)
        result.rows = [_credential(r) for r in result.rows]
        return result

    async def active_mcp(self, vault_ids: list[str]) -> list[tuple[Credential, str | None]]:
        """Active MCP credentials (with their encrypted secrets) of the given active vaults, in the
        order of `vault_ids`, then oldest first."""
        return await self._active(vault_ids, "mcp:%")

    async def environment_credentials(self, vault_ids: list[str]) -> list[tuple[Credential, str]]:
        """The active `environment_variable` credentials of these vaults with their encrypted secrets, in
        the order of `vault_ids`, then oldest first (archived vaults' credentials are left out)."""
        return [(cred, secret) for cred, secret in await self._active(vault_ids, "env:%") if secret is not None]

    async def _active(self, vault_ids: list[str], target: str) -> list[tuple[Credential, str | None]]:
        """Active credentials whose target matches `target` (a LIKE pattern) in active vaults, with their
        encrypted secrets, in the order of `vault_ids`, then oldest first."""
        if not vault_ids:
            return []
        c, v = t.vault_credentials.c, t.vaults.c
        query = (
            select(t.vault_credentials)
            .join(t.vaults, v.id == c.vault_id)
            .where(c.vault_id.in_(vault_ids), c.archived_at.is_(None), v.archived_at.is_(None), c.target.like(target))
            .order_by(c.created_at, c.id)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        rank = {vault_id: i for i, vault_id in enumerate(vault_ids)}
        rows.sort(key=lambda r: rank.get(r.vault_id, len(rank)))
        return [(_credential(r), r.secret) for r in rows]

    # ---- encrypted secrets, for key checks and rotation ----

    async def sample_secret(self) -> str | None:
        """Any one stored (encrypted) secret, to check the configured keys against."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(t.vault_credentials.c.secret).where(t.vault_credentials.c.secret.is_not(None)).limit(1)
                )
            ).first()
        return row.secret if row else None

    async def secrets_after(self, after: str, limit: int) -> list[tuple[str, str]]:
        """(credential id, encrypted secret) of stored secrets with ids above `after`, in id order."""
        c = t.vault_credentials.c
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(c.id, c.secret).where(c.secret.is_not(None), c.id > after).order_by(c.id).limit(limit)
                )
            ).all()
        return [(r.id, r.secret) for r in rows]

    async def secret_of(self, credential_id: str) -> str | None:
        c = t.vault_credentials.c
        async with self.db.read() as conn:
            row = (await conn.execute(select(c.secret).where(c.id == credential_id))).first()
        return row.secret if row else None

    async def swap_secret(self, credential_id: str, old: str, new: str) -> bool:
        """Replace the encrypted secret if it is still `old` (a concurrent update wins otherwise)."""
        c = t.vault_credentials.c
        async with self.db.write() as conn:
            result = await conn.execute(
                update(t.vault_credentials).where(c.id == credential_id, c.secret == old).values(secret=new)
            )
        return result.rowcount == 1


def _target_taken(vault_id: str, target: str, other: str | None) -> Conflict:
    kind, _, value = target.partition(":")
    by = f" ({other})" if other else ""
    if kind == "env":
        return Conflict(
            f"vault {vault_id} already has an active credential{by} with secret_name {value!r}",
            code="secret_name_taken",
        )
    return Conflict(
        f"vault {vault_id} already has an active credential{by} for mcp_server_url {value!r}",
        code="mcp_server_url_taken",
    )
