"""Vaults and credentials on the wire. Secret fields (`token`, `access_token`, `refresh_token`,
`client_secret`, `secret_value`) exist only in request models, as `SecretStr` (masked in reprs);
no response model has a place for them."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from .common import Metadata, MetadataPatch, Request, Response, Timestamp, validate_metadata

__all__ = [
    "Credential",
    "CredentialCreate",
    "CredentialUpdate",
    "CredentialValidation",
    "EnvironmentVariableAuth",
    "MCPOAuthAuth",
    "StaticBearerAuth",
    "Vault",
    "VaultCreate",
    "VaultUpdate",
    "check_host",
    "check_url",
]

MAX_SECRET_CHARS = 65_536
MAX_ALLOWED_HOSTS = 16

Secret = Annotated[SecretStr, Field(min_length=1, max_length=MAX_SECRET_CHARS)]
DisplayName = Annotated[str, Field(min_length=1, max_length=255)]

# ---- responses ------------------------------------------------------------------------------------


class Vault(Response):
    type: Literal["vault"] = "vault"
    id: str
    display_name: str
    metadata: Metadata
    created_at: Timestamp
    updated_at: Timestamp
    archived_at: Timestamp | None = None


class TokenEndpointAuth(Response):
    type: Literal["none", "client_secret_basic", "client_secret_post"]


class MCPOAuthRefresh(Response):
    client_id: str
    token_endpoint: str
    token_endpoint_auth: TokenEndpointAuth
    resource: str | None = None
    scope: str | None = None


class MCPOAuthAuth(Response):
    type: Literal["mcp_oauth"] = "mcp_oauth"
    mcp_server_url: str
    expires_at: Timestamp | None = None
    refresh: MCPOAuthRefresh | None = None


class StaticBearerAuth(Response):
    type: Literal["static_bearer"] = "static_bearer"
    mcp_server_url: str


class UnrestrictedCredentialNetworking(Response):
    type: Literal["unrestricted"] = "unrestricted"


class LimitedCredentialNetworking(Response):
    type: Literal["limited"] = "limited"
    allowed_hosts: list[str]


CredentialNetworking = Annotated[
    UnrestrictedCredentialNetworking | LimitedCredentialNetworking, Field(discriminator="type")
]


class InjectionLocation(Response):
    body: bool
    header: bool


class EnvironmentVariableAuth(Response):
    type: Literal["environment_variable"] = "environment_variable"
    secret_name: str
    networking: CredentialNetworking
    injection_location: InjectionLocation


CredentialAuth = Annotated[MCPOAuthAuth | StaticBearerAuth | EnvironmentVariableAuth, Field(discriminator="type")]


class Credential(Response):
    type: Literal["vault_credential"] = "vault_credential"
    id: str
    vault_id: str
    display_name: str | None = None
    auth: CredentialAuth
    metadata: Metadata
    created_at: Timestamp
    updated_at: Timestamp
    archived_at: Timestamp | None = None


class HTTPResponseCapture(Response):
    status_code: int
    content_type: str
    body: str
    body_truncated: bool


class MCPProbe(Response):
    method: str
    http_response: HTTPResponseCapture | None = None


class RefreshOutcome(Response):
    status: Literal["succeeded", "failed", "connect_error", "no_refresh_token"]
    http_response: HTTPResponseCapture | None = None


class CredentialValidation(Response):
    type: Literal["vault_credential_validation"] = "vault_credential_validation"
    credential_id: str
    vault_id: str
    status: Literal["valid", "invalid", "unknown"]
    has_refresh_token: bool
    validated_at: Timestamp
    mcp_probe: MCPProbe | None = None
    refresh: RefreshOutcome | None = None


# ---- checks ---------------------------------------------------------------------------------------

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_url(value: str, what: str) -> str:
    """An absolute http(s) URL with a host, as MCP server and token endpoint URLs must be."""
    if len(value) > 2048 or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be an http(s) URL of at most 2048 characters without spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{what} must be an absolute http:// or https:// URL")
    return value


def _hostname(name: str) -> bool:
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()  # all-numeric names are IPv4 addresses or nothing


def check_host(entry: str) -> str:
    """A bare hostname, an IPv4 address, or `*.` + a hostname of two or more labels (lowercased)."""
    host = entry.strip().lower()
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    if host.startswith("*."):
        suffix = host[2:]
        if "." in suffix and _hostname(suffix):
            return host
    elif _hostname(host):
        return host
    raise ValueError(
        f"allowed host {entry[:100]!r} must be a bare hostname (api.example.com), an IPv4 address, or a "
        "*. wildcard (*.example.com); URLs, ports, paths and IPv6 addresses are not accepted"
    )


# ---- requests: vaults -----------------------------------------------------------------------------


class VaultCreate(Request):
    display_name: DisplayName
    metadata: Metadata | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        return None if metadata is None else validate_metadata(metadata)


class VaultUpdate(Request):
    display_name: DisplayName | None = None
    metadata: MetadataPatch | None = None


# ---- requests: credential auth (create) -----------------------------------------------------------


class TokenEndpointAuthNoneParams(Request):
    type: Literal["none"]


class TokenEndpointAuthBasicParams(Request):
    type: Literal["client_secret_basic"]
    client_secret: Secret


class TokenEndpointAuthPostParams(Request):
    type: Literal["client_secret_post"]
    client_secret: Secret


class MCPOAuthRefreshParams(Request):
    refresh_token: Secret
    client_id: Annotated[str, Field(min_length=1, max_length=2048)]
    token_endpoint: str
    token_endpoint_auth: Annotated[
        TokenEndpointAuthNoneParams | TokenEndpointAuthBasicParams | TokenEndpointAuthPostParams,
        Field(discriminator="type"),
    ]
    resource: Annotated[str, Field(max_length=2048)] | None = None
    scope: Annotated[str, Field(max_length=2048)] | None = None

    @field_validator("token_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_url(value, "token_endpoint")


class MCPOAuthCreateParams(Request):
    type: Literal["mcp_oauth"]
    mcp_server_url: str
    access_token: Secret
    expires_at: datetime | None = None
    refresh: MCPOAuthRefreshParams | None = None

    @field_validator("mcp_server_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, "mcp_server_url")


class StaticBearerCreateParams(Request):
    type: Literal["static_bearer"]
    mcp_server_url: str
    token: Secret

    @field_validator("mcp_server_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, "mcp_server_url")


class UnrestrictedNetworkingParams(Request):
    type: Literal["unrestricted"]


class LimitedNetworkingParams(Request):
    type: Literal["limited"]
    allowed_hosts: list[str] = Field(min_length=1, max_length=MAX_ALLOWED_HOSTS)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        return list(dict.fromkeys(check_host(h) for h in hosts))


NetworkingParams = Annotated[UnrestrictedNetworkingParams | LimitedNetworkingParams, Field(discriminator="type")]


class InjectionLocationParams(Request):
    body: bool | None = None
    header: bool | None = None


class EnvironmentVariableCreateParams(Request):
    type: Literal["environment_variable"]
    secret_name: Annotated[str, Field(min_length=1, max_length=255)]
    secret_value: Secret
    networking: NetworkingParams
    injection_location: InjectionLocationParams | None = None

    @field_validator("secret_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(
                "secret_name must be an environment variable name: letters, digits and _, not first a digit"
            )
        return value


AuthCreateParams = Annotated[
    MCPOAuthCreateParams | StaticBearerCreateParams | EnvironmentVariableCreateParams, Field(discriminator="type")
]


class CredentialCreate(Request):
    auth: AuthCreateParams
    display_name: Annotated[str, Field(max_length=255)] | None = None
    metadata: Metadata | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        return None if metadata is None else validate_metadata(metadata)


# ---- requests: credential auth (update) -----------------------------------------------------------


class TokenEndpointAuthBasicUpdate(Request):
    type: Literal["client_secret_basic"]
    client_secret: Secret | None = None


class TokenEndpointAuthPostUpdate(Request):
    type: Literal["client_secret_post"]
    client_secret: Secret | None = None


class MCPOAuthRefreshUpdate(Request):
    refresh_token: Secret | None = None
    scope: Annotated[str, Field(max_length=2048)] | None = None
    token_endpoint_auth: (
        Annotated[TokenEndpointAuthBasicUpdate | TokenEndpointAuthPostUpdate, Field(discriminator="type")] | None
    ) = None


class MCPOAuthUpdateParams(Request):
    type: Literal["mcp_oauth"]
    access_token: Secret | None = None
    expires_at: datetime | None = None
    refresh: MCPOAuthRefreshUpdate | None = None


class StaticBearerUpdateParams(Request):
    type: Literal["static_bearer"]
    token: Secret | None = None


class EnvironmentVariableUpdateParams(Request):
    type: Literal["environment_variable"]
    secret_value: Secret | None = None
    networking: NetworkingParams | None = None
    injection_location: InjectionLocationParams | None = None


AuthUpdateParams = Annotated[
    MCPOAuthUpdateParams | StaticBearerUpdateParams | EnvironmentVariableUpdateParams, Field(discriminator="type")
]


class CredentialUpdate(Request):
    auth: AuthUpdateParams | None = None
    display_name: DisplayName | None = None
    metadata: MetadataPatch | None = None
