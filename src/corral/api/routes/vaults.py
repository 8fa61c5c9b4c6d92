"""`/v1/vaults` and `/v1/vaults/{vault_id}/credentials`: create, retrieve, update, list, archive, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...schemas.vaults import (
    Credential,
    CredentialCreate,
    CredentialUpdate,
    CredentialValidation,
    Vault,
    VaultCreate,
    VaultUpdate,
)
from ...service.credentials import archive_credential, create_credential, update_credential
from ...service.vaults import archive_vault, create_vault, update_vault
from ...store.store import Store
from ...tools.mcp import MCPClient
from ...vault.crypto import SecretBox
from ...vault.validate import validate_mcp_oauth
from ..deps import get_runtime, get_store
from ..query import parse_bool, parse_limit
from .pages import Deleted, PageOut

router = APIRouter(prefix="/v1/vaults", tags=["vaults"])


async def get_box(request: Request) -> SecretBox:
    """The current secret keys (the key file is re-read when it changed)."""
    return (await get_runtime(request).secret_keys()).box()


@router.post("", response_model=Vault)
async def create(body: VaultCreate, store: Store = Depends(get_store)) -> Vault:
    return await create_vault(store, body)


@router.get("/{vault_id}", response_model=Vault)
async def retrieve(vault_id: str, store: Store = Depends(get_store)) -> Vault:
    return await store.vaults.get(vault_id)


@router.post("/{vault_id}", response_model=Vault)
async def update(vault_id: str, body: VaultUpdate, store: Store = Depends(get_store)) -> Vault:
    return await update_vault(store, vault_id, body)


@router.get("", response_model=PageOut[Vault])
async def list_vaults(
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    store: Store = Depends(get_store),
) -> PageOut[Vault]:
    result = await store.vaults.list(
        limit=parse_limit(limit, 20, 100), page=page, include_archived=parse_bool(include_archived, "include_archived")
    )
    return PageOut[Vault](data=result.rows, next_page=result.next_page)


@router.delete("/{vault_id}", response_model=Deleted)
async def delete(vault_id: str, store: Store = Depends(get_store)) -> Deleted:
    await store.vaults.delete(vault_id)
    return Deleted(id=vault_id, type="vault_deleted")


@router.post("/{vault_id}/archive", response_model=Vault)
async def archive(vault_id: str, store: Store = Depends(get_store)) -> Vault:
    return await archive_vault(store, vault_id)


@router.post("/{vault_id}/credentials", response_model=Credential)
async def create_cred(
    vault_id: str, body: CredentialCreate, store: Store = Depends(get_store), box: SecretBox = Depends(get_box)
) -> Credential:
    return await create_credential(store, box, vault_id, body)


@router.get("/{vault_id}/credentials/{credential_id}", response_model=Credential)
async def retrieve_cred(vault_id: str, credential_id: str, store: Store = Depends(get_store)) -> Credential:
    return await store.credentials.get(vault_id, credential_id)


@router.post("/{vault_id}/credentials/{credential_id}", response_model=Credential)
async def update_cred(
    vault_id: str,
    credential_id: str,
    body: CredentialUpdate,
    store: Store = Depends(get_store),
    box: SecretBox = Depends(get_box),
) -> Credential:
    return await update_credential(store, box, vault_id, credential_id, body)


@router.get("/{vault_id}/credentials", response_model=PageOut[Credential])
async def list_creds(
    vault_id: str,
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    store: Store = Depends(get_store),
) -> PageOut[Credential]:
    result = await store.credentials.list(
        vault_id,
        limit=parse_limit(limit, 20, 100),
        page=page,
        include_archived=parse_bool(include_archived, "include_archived"),
    )
    return PageOut[Credential](data=result.rows, next_page=result.next_page)


@router.delete("/{vault_id}/credentials/{credential_id}", response_model=Deleted)
async def delete_cred(vault_id: str, credential_id: str, store: Store = Depends(get_store)) -> Deleted:
    await store.credentials.delete(vault_id, credential_id)
    return Deleted(id=credential_id, type="vault_credential_deleted")


@router.post("/{vault_id}/credentials/{credential_id}/archive", response_model=Credential)
async def archive_cred(vault_id: str, credential_id: str, store: Store = Depends(get_store)) -> Credential:
    return await archive_credential(store, vault_id, credential_id)


@router.post("/{vault_id}/credentials/{credential_id}/mcp_oauth_validate", response_model=CredentialValidation)
async def validate_cred(
    vault_id: str,
    credential_id: str,
    request: Request,
    store: Store = Depends(get_store),
    box: SecretBox = Depends(get_box),
) -> CredentialValidation:
    settings = get_runtime(request).settings
    client = MCPClient(timeout=settings.mcp_timeout_seconds, tool_timeout=settings.mcp_timeout_seconds)
    return await validate_mcp_oauth(store, box, client, vault_id, credential_id)
