"""Vault operations, the vault check of session create, and re-encryption of every secret (key rotation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import InvalidRequest
from ..ids import new_id
from ..schemas.common import apply_metadata_patch
from ..schemas.vaults import Vault, VaultCreate, VaultUpdate
from ..store.store import Store
from ..vault.crypto import SecretBox, UndecryptableSecret

__all__ = [
    "RotationReport",
    "archive_vault",
    "check_session_vaults",
    "create_vault",
    "reencrypt_secrets",
    "update_vault",
]


async def create_vault(store: Store, params: VaultCreate) -> Vault:
    now = datetime.now(UTC)
    vault = Vault(
        id=new_id("vault"),
        display_name=params.display_name,
        metadata=params.metadata or {},
        created_at=now,
        updated_at=now,
    )
    return await store.vaults.create(vault)


async def update_vault(store: Store, vault_id: str, params: VaultUpdate) -> Vault:
    def change(current: Vault) -> Vault | None:
        if current.archived_at is not None:
            raise InvalidRequest(f"vault {vault_id} is archived", code="vault_archived")
        changes: dict[str, object] = {}
        if params.display_name is not None:
            changes["display_name"] = params.display_name
        if params.metadata is not None:
            try:
                changes["metadata"] = apply_metadata_patch(current.metadata, params.metadata)
            except ValueError as exc:
                raise InvalidRequest(str(exc), code="invalid_metadata") from exc
        if not changes:
            return None
        changes["updated_at"] = datetime.now(UTC)
        return current.model_copy(update=changes)

    return await store.vaults.update(vault_id, change)


async def archive_vault(store: Store, vault_id: str) -> Vault:
    return await store.vaults.archive(vault_id, datetime.now(UTC))


async def check_session_vaults(store: Store, vault_ids: list[str]) -> list[str]:
    """The ids a new session may attach: each must exist (404) and not be archived (400). Duplicates go."""
    unique = list(dict.fromkeys(vault_ids))
    for vault_id in unique:
        vault = await store.vaults.get(vault_id)
        if vault.archived_at is not None:
            raise InvalidRequest(f"vault {vault_id} is archived and cannot be attached", code="vault_archived")
    return unique


@dataclass
class RotationReport:
    rotated: int = 0
    current: int = 0
    failed: list[str] = field(default_factory=list)


async def reencrypt_secrets(store: Store, box: SecretBox, batch: int = 200) -> RotationReport:
    """Re-encrypt every stored secret that is not yet under `box`'s first key.

    Each row is swapped only if it still holds what was read, so a concurrent credential update
    (which writes under the first key of its own process) is never overwritten; such a row is read
    again. Secrets no configured key can decrypt are reported in `failed` and left as they are."""
    report = RotationReport()
    for repo in (store.credentials, store.session_resources):  # vault credentials, repository tokens
        await _reencrypt(repo, box, batch, report)
    return report


async def _reencrypt(repo: Any, box: SecretBox, batch: int, report: RotationReport) -> None:
    after = ""
    while True:
        rows = await repo.secrets_after(after, batch)
        if not rows:
            return
        for credential_id, token in rows:
            while token is not None:
                if box.is_current(token):
                    report.current += 1
                    break
                try:
                    fresh = box.rotate(token)
                except UndecryptableSecret:
                    report.failed.append(credential_id)
                    break
                if await repo.swap_secret(credential_id, token, fresh):
                    report.rotated += 1
                    break
                token = await repo.secret_of(credential_id)
        after = rows[-1][0]
