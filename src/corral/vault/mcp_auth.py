"""Credentials for MCP servers, from a session's vaults.

For a server URL, the first active `static_bearer` or `mcp_oauth` credential whose `mcp_server_url`
matches (vaults in the order of the session's `vault_ids`) supplies the bearer token. An `mcp_oauth`
access token is refreshed through the credential's token endpoint when it has expired (or expires
within a minute) and when the server refuses it; the new token (and a rotated refresh token) is
stored encrypted, with the new `expires_at`. Plaintext tokens live only in memory, for the request
that sends them; failures are logged and reported without them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from ..schemas.common import from_micros, to_micros
from ..schemas.sessions import Session
from ..schemas.vaults import Credential, MCPOAuthAuth, StaticBearerAuth
from ..store.store import Store
from .crypto import SecretBox, UndecryptableSecret
from .oauth import RefreshFailed, refresh_access_token

__all__ = ["VaultMCPAuth", "VaultTokens", "same_server"]

log = logging.getLogger("corral.vault")
EXPIRY_MARGIN = timedelta(seconds=60)


def _normal(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def same_server(a: str, b: str) -> bool:
    """Whether two MCP server URLs name the same endpoint (scheme and host case, a trailing `/` aside)."""
    return _normal(a) == _normal(b)


class VaultMCPAuth:
    """Makes the `TokenSource` (tools/mcp.py) of each session."""

    def __init__(self, store: Store, box: Callable[[], Awaitable[SecretBox]], *, timeout: float) -> None:
        self.store = store
        self.box = box
        self.timeout = timeout

    def for_session(self, session: Session) -> VaultTokens:
        return VaultTokens(self, list(session.vault_ids))


class VaultTokens:
    def __init__(self, auth: VaultMCPAuth, vault_ids: list[str]) -> None:
        self.auth = auth
        self.vault_ids = vault_ids
        self._refresh_failed: set[str] = set()

    async def _find(self, server_url: str) -> tuple[Credential, str | None] | None:
        for credential, secret in await self.auth.store.credentials.active_mcp(self.vault_ids):
            auth = credential.auth
            if isinstance(auth, MCPOAuthAuth | StaticBearerAuth) and same_server(auth.mcp_server_url, server_url):
                return credential, secret
        return None

    async def token(self, server_url: str, *, refresh: bool = False) -> str | None:
        found = await self._find(server_url)
        if found is None or found[1] is None:
            return None
        credential, encrypted = found
        box = await self.auth.box()
        try:
            secret = box.decrypt(encrypted)  # type: ignore[arg-type]
        except UndecryptableSecret:
            log.warning("credential %s cannot be decrypted with the configured secret keys", credential.id)
            return None
        auth = credential.auth
        if isinstance(auth, StaticBearerAuth):
            return secret.get("token")
        assert isinstance(auth, MCPOAuthAuth)
        expired = auth.expires_at is not None and auth.expires_at <= datetime.now(UTC) + EXPIRY_MARGIN
        if (refresh or expired) and auth.refresh is not None and credential.id not in self._refresh_failed:
            fresh = await self._refresh(credential, secret)
            if fresh is not None:
                return fresh
        return secret.get("access_token")

    async def _refresh(self, credential: Credential, secret: dict[str, str]) -> str | None:
        auth = credential.auth
        assert isinstance(auth, MCPOAuthAuth) and auth.refresh is not None
        try:
            grant = await refresh_access_token(auth.refresh, secret, timeout=self.auth.timeout)
        except RefreshFailed as exc:
            self._refresh_failed.add(credential.id)
            log.warning("refreshing the token of credential %s failed: %s", credential.id, exc.message)
            return None
        box = await self.auth.box()
        await store_grant(self.auth.store, box, credential, grant.access_token, grant.refresh_token, grant.expires_in)
        log.info("refreshed the access token of credential %s", credential.id)
        return grant.access_token


async def store_grant(
    store: Store,
    box: SecretBox,
    credential: Credential,
    access_token: str,
    refresh_token: str | None,
    expires_in: float | None,
) -> None:
    """Store a refreshed access token (and rotated refresh token) encrypted, with its new expiry."""
    now = datetime.now(UTC)
    expires = from_micros(to_micros(now + timedelta(seconds=expires_in))) if expires_in is not None else None

    def change(current: Credential, token: str | None) -> tuple[Credential, str | None] | None:
        if current.archived_at is not None or not isinstance(current.auth, MCPOAuthAuth):
            return None
        merged = box.decrypt(token) if token else {}
        merged["access_token"] = access_token
        if refresh_token:
            merged["refresh_token"] = refresh_token
        auth = current.auth.model_copy(update={"expires_at": expires})
        return current.model_copy(update={"auth": auth, "updated_at": now}), box.encrypt(merged)

    await store.credentials.update(credential.vault_id, credential.id, change)
