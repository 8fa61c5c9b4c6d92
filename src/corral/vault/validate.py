"""`POST …/credentials/{id}/mcp_oauth_validate`: probe an `mcp_oauth` credential against its MCP server.

The probe connects with the stored access token and lists tools. If the server refuses it (401/403),
the refresh token is exchanged at the token endpoint (the new token is stored, as a session's refresh
would) and the probe runs again. The verdict: `valid` (the server took a token), `invalid` (it refused,
and no refresh got one it takes), `unknown` (the server could not be reached or failed otherwise).
Captured responses never carry tokens: token endpoint bodies are redacted (vault/oauth.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..errors import ApiError, InvalidRequest
from ..schemas.vaults import CredentialValidation, HTTPResponseCapture, MCPOAuthAuth, MCPProbe, RefreshOutcome
from ..store.store import Store
from ..tools.mcp import MCPClient, Probe
from .crypto import SecretBox, UndecryptableSecret
from .mcp_auth import store_grant
from .oauth import RefreshFailed, refresh_access_token

__all__ = ["validate_mcp_oauth"]


def _probe_report(probe: Probe) -> MCPProbe | None:
    if probe.outcome == "ok":
        return None
    capture = HTTPResponseCapture(**probe.http_response) if probe.http_response else None
    return MCPProbe(method=probe.method, http_response=capture)


async def validate_mcp_oauth(
    store: Store, box: SecretBox, client: MCPClient, vault_id: str, credential_id: str
) -> CredentialValidation:
    credential = await store.credentials.get(vault_id, credential_id)
    auth = credential.auth
    if not isinstance(auth, MCPOAuthAuth):
        raise InvalidRequest(f"credential {credential_id} is a {auth.type} credential; only mcp_oauth can be validated")
    if credential.archived_at is not None:
        raise InvalidRequest(f"credential {credential_id} is archived", code="credential_archived")
    encrypted = await store.credentials.secret_of(credential_id)
    try:
        secret = box.decrypt(encrypted) if encrypted else {}
    except UndecryptableSecret:
        message = "the stored secret of this credential cannot be decrypted with the configured secret key"
        raise ApiError(message) from None
    has_refresh = auth.refresh is not None and bool(secret.get("refresh_token"))

    def verdict(status: str, probe: Probe | None, refresh: RefreshOutcome | None) -> CredentialValidation:
        return CredentialValidation(
            credential_id=credential_id,
            vault_id=vault_id,
            status=status,  # type: ignore[arg-type]
            has_refresh_token=has_refresh,
            validated_at=datetime.now(UTC),
            mcp_probe=_probe_report(probe) if probe else None,
            refresh=refresh,
        )

    probe = await client.probe(auth.mcp_server_url, secret.get("access_token"))
    if probe.outcome != "refused":
        return verdict("valid" if probe.outcome == "ok" else "unknown", probe, None)
    if auth.refresh is None or not has_refresh:
        return verdict("invalid", probe, RefreshOutcome(status="no_refresh_token"))
    try:
        grant = await refresh_access_token(auth.refresh, secret, timeout=client.timeout)
    except RefreshFailed as exc:
        capture = HTTPResponseCapture(**exc.response) if exc.response else None
        status = exc.status if exc.status in ("failed", "connect_error") else "failed"
        return verdict("invalid", probe, RefreshOutcome(status=status, http_response=capture))  # type: ignore[arg-type]
    await store_grant(store, box, credential, grant.access_token, grant.refresh_token, grant.expires_in)
    again = await client.probe(auth.mcp_server_url, grant.access_token)
    status = {"ok": "valid", "refused": "invalid", "failed": "unknown"}[again.outcome]
    return verdict(status, again, RefreshOutcome(status="succeeded"))
