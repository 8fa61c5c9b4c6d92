"""Credential operations: build the stored (secret-free) auth and the encrypted secret from a request,
and apply updates. Plaintext secrets exist only inside these functions, between the request model and
`SecretBox.encrypt`; they are never logged, returned or put in events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..errors import ApiError, InvalidRequest
from ..ids import new_id
from ..schemas.common import apply_metadata_patch, from_micros, to_micros
from ..schemas.vaults import (
    Credential,
    CredentialCreate,
    CredentialUpdate,
    EnvironmentVariableAuth,
    EnvironmentVariableCreateParams,
    EnvironmentVariableUpdateParams,
    InjectionLocation,
    InjectionLocationParams,
    LimitedCredentialNetworking,
    MCPOAuthAuth,
    MCPOAuthCreateParams,
    MCPOAuthRefresh,
    MCPOAuthUpdateParams,
    StaticBearerAuth,
    StaticBearerCreateParams,
    StaticBearerUpdateParams,
    TokenEndpointAuth,
    UnrestrictedCredentialNetworking,
)
from ..store.store import Store
from ..vault.crypto import SecretBox, UndecryptableSecret

__all__ = ["MAX_ACTIVE_CREDENTIALS", "archive_credential", "create_credential", "update_credential"]

MAX_ACTIVE_CREDENTIALS = 20

Auth = MCPOAuthAuth | StaticBearerAuth | EnvironmentVariableAuth


def target_of(auth: Auth) -> str:
    """What a credential is matched by; unique among a vault's active credentials."""
    if isinstance(auth, EnvironmentVariableAuth):
        return f"env:{auth.secret_name}"
    return f"mcp:{auth.mcp_server_url}"


def _future(value: datetime, now: datetime) -> datetime:
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if value <= now:
        raise InvalidRequest("auth.expires_at must be in the future")
    return from_micros(to_micros(value))


def _networking(params: Any) -> UnrestrictedCredentialNetworking | LimitedCredentialNetworking:
    if params.type == "limited":
        return LimitedCredentialNetworking(allowed_hosts=params.allowed_hosts)
    return UnrestrictedCredentialNetworking()


def _check_injection(location: InjectionLocation) -> InjectionLocation:
    if not (location.header or location.body):
        raise InvalidRequest("auth.injection_location must enable header, body or both")
    return location


def _create_auth(params: Any, now: datetime) -> tuple[Auth, dict[str, str]]:
    if isinstance(params, StaticBearerCreateParams):
        return StaticBearerAuth(mcp_server_url=params.mcp_server_url), {"token": params.token.get_secret_value()}
    if isinstance(params, MCPOAuthCreateParams):
        secret = {"access_token": params.access_token.get_secret_value()}
        refresh = None
        if params.refresh is not None:
            r = params.refresh
            secret["refresh_token"] = r.refresh_token.get_secret_value()
            if r.token_endpoint_auth.type != "none":
                secret["client_secret"] = r.token_endpoint_auth.client_secret.get_secret_value()  # type: ignore[union-attr]
            refresh = MCPOAuthRefresh(
                client_id=r.client_id,
                token_endpoint=r.token_endpoint,
                token_endpoint_auth=TokenEndpointAuth(type=r.token_endpoint_auth.type),
                resource=r.resource,
                scope=r.scope,
            )
        expires = _future(params.expires_at, now) if params.expires_at is not None else None
        return MCPOAuthAuth(mcp_server_url=params.mcp_server_url, expires_at=expires, refresh=refresh), secret
    assert isinstance(params, EnvironmentVariableCreateParams)
    if "injection_location" in params.model_fields_set and params.injection_location is None:
        raise InvalidRequest("auth.injection_location cannot be null: omit it to allow both header and body")
    given = params.injection_location
    location = (
        InjectionLocation(header=True, body=True)
        if given is None
        else InjectionLocation(header=bool(given.header), body=bool(given.body))
    )
    auth = EnvironmentVariableAuth(
        secret_name=params.secret_name,
        networking=_networking(params.networking),
        injection_location=_check_injection(location),
    )
    return auth, {"secret_value": params.secret_value.get_secret_value()}


async def create_credential(store: Store, box: SecretBox, vault_id: str, params: CredentialCreate) -> Credential:
    now = datetime.now(UTC)
    auth, secret = _create_auth(params.auth, now)
    credential = Credential(
        id=new_id("credential"),
        vault_id=vault_id,
        display_name=params.display_name or None,
        auth=auth,
        metadata=params.metadata or {},
        created_at=now,
        updated_at=now,
    )
    return await store.credentials.create(
        credential, target_of(auth), box.encrypt(secret), max_active=MAX_ACTIVE_CREDENTIALS
    )


class _Secret:
    """The stored secret, decrypted only if an update needs to merge into it."""

    def __init__(self, box: SecretBox, token: str | None) -> None:
        self.box, self.token = box, token
        self._plain: dict[str, str] | None = None
        self.changed = False

    def merged(self) -> dict[str, str]:
        if self._plain is None:
            if self.token is None:
                self._plain = {}
            else:
                try:
                    self._plain = self.box.decrypt(self.token)
                except UndecryptableSecret:
                    raise ApiError(
                        "the stored secret of this credential cannot be decrypted with the configured secret "
                        "key; see `corral secrets` in the configuration docs"
                    ) from None
        return self._plain

    def set(self, name: str, value: Any) -> None:
        if value is not None:
            self.merged()[name] = value.get_secret_value()
            self.changed = True

    def replace(self, values: dict[str, str]) -> None:
        self._plain, self.changed = values, True

    def encrypted(self) -> str | None:
        return self.box.encrypt(self.merged()) if self.changed else self.token


def _update_auth(current: Auth, params: Any, secret: _Secret, now: datetime) -> Auth:
    if params.type != current.type:
        raise InvalidRequest(f"auth.type cannot change from {current.type!r} to {params.type!r}")
    given = params.model_fields_set
    if isinstance(params, StaticBearerUpdateParams):
        if params.token is not None:
            secret.replace({"token": params.token.get_secret_value()})
        return current
    if isinstance(params, MCPOAuthUpdateParams):
        assert isinstance(current, MCPOAuthAuth)
        changes: dict[str, Any] = {}
        secret.set("access_token", params.access_token)
        if "expires_at" in given:
            changes["expires_at"] = _future(params.expires_at, now) if params.expires_at is not None else None
        if params.refresh is not None:
            changes["refresh"] = _update_refresh(current.refresh, params.refresh, secret)
        return current.model_copy(update=changes)
    assert isinstance(params, EnvironmentVariableUpdateParams) and isinstance(current, EnvironmentVariableAuth)
    changes = {}
    if params.secret_value is not None:
        secret.replace({"secret_value": params.secret_value.get_secret_value()})
    if params.networking is not None:
        changes["networking"] = _networking(params.networking)
    if "injection_location" in given:
        changes["injection_location"] = _merge_injection(current.injection_location, params.injection_location)
    return current.model_copy(update=changes)


def _update_refresh(current: MCPOAuthRefresh | None, params: Any, secret: _Secret) -> MCPOAuthRefresh:
    if current is None:
        raise InvalidRequest(
            "auth.refresh: this credential was created without refresh settings (client_id and token_endpoint "
            "are set at create only)"
        )
    changes: dict[str, Any] = {}
    secret.set("refresh_token", params.refresh_token)
    if params.scope is not None:
        changes["scope"] = params.scope or None
    if params.token_endpoint_auth is not None:
        if current.token_endpoint_auth.type == "none":
            raise InvalidRequest(
                "auth.refresh.token_endpoint_auth: this credential's token endpoint takes no client secret"
            )
        secret.set("client_secret", params.token_endpoint_auth.client_secret)
    return current.model_copy(update=changes)


def _merge_injection(current: InjectionLocation, params: InjectionLocationParams | None) -> InjectionLocation:
    if params is None:
        raise InvalidRequest("auth.injection_location cannot be null")
    merged = InjectionLocation(
        header=current.header if params.header is None else params.header,
        body=current.body if params.body is None else params.body,
    )
    return _check_injection(merged)


async def update_credential(
    store: Store, box: SecretBox, vault_id: str, credential_id: str, params: CredentialUpdate
) -> Credential:
    given = params.model_fields_set

    def change(current: Credential, token: str | None) -> tuple[Credential, str | None] | None:
        if current.archived_at is not None:
            raise InvalidRequest(f"credential {credential_id} is archived", code="credential_archived")
        now = datetime.now(UTC)
        secret = _Secret(box, token)
        changes: dict[str, Any] = {}
        if params.auth is not None:
            auth = _update_auth(current.auth, params.auth, secret, now)
            if auth != current.auth:
                changes["auth"] = auth
        if "display_name" in given and params.display_name != current.display_name:
            changes["display_name"] = params.display_name
        if params.metadata is not None:
            try:
                metadata = apply_metadata_patch(current.metadata, params.metadata)
            except ValueError as exc:
                raise InvalidRequest(str(exc), code="invalid_metadata") from exc
            if metadata != current.metadata:
                changes["metadata"] = metadata
        if not changes and not secret.changed:
            return None
        changes["updated_at"] = now
        return current.model_copy(update=changes), secret.encrypted()

    return await store.credentials.update(vault_id, credential_id, change)


async def archive_credential(store: Store, vault_id: str, credential_id: str) -> Credential:
    return await store.credentials.archive(vault_id, credential_id, datetime.now(UTC))
