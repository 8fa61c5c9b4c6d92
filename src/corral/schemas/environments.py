"""Environments: the recipe a session's sandbox is built from (packages, networking) or a self-hosted marker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .common import Metadata, MetadataPatch, Request, Response, Timestamp, validate_metadata

__all__ = [
    "CloudConfig",
    "Environment",
    "EnvironmentCreate",
    "EnvironmentUpdate",
    "SelfHostedConfig",
    "merge_config",
]

PACKAGE_MANAGERS = ("apt", "cargo", "gem", "go", "npm", "pip")


class UnrestrictedNetwork(Response):
    type: Literal["unrestricted"] = "unrestricted"


class LimitedNetwork(Response):
    type: Literal["limited"] = "limited"
    allowed_hosts: list[str] = Field(default_factory=list)
    allow_mcp_servers: bool = False
    allow_package_managers: bool = False


Networking = Annotated[UnrestrictedNetwork | LimitedNetwork, Field(discriminator="type")]


class Packages(Response):
    type: Literal["packages"] = "packages"
    apt: list[str] = Field(default_factory=list)
    cargo: list[str] = Field(default_factory=list)
    gem: list[str] = Field(default_factory=list)
    go: list[str] = Field(default_factory=list)
    npm: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)


class CloudConfig(Response):
    type: Literal["cloud"] = "cloud"
    networking: Networking = Field(default_factory=UnrestrictedNetwork)
    packages: Packages = Field(default_factory=Packages)


class SelfHostedConfig(Response):
    type: Literal["self_hosted"] = "self_hosted"


Config = Annotated[CloudConfig | SelfHostedConfig, Field(discriminator="type")]


class NetworkingParams(Request):
    type: Literal["unrestricted", "limited"]
    allowed_hosts: list[str] | None = None
    allow_mcp_servers: bool | None = None
    allow_package_managers: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> NetworkingParams:
        if self.type == "unrestricted" and (
            self.allowed_hosts is not None
            or self.allow_mcp_servers is not None
            or self.allow_package_managers is not None
        ):
            raise ValueError("unrestricted networking takes no allowed_hosts or allow_* settings")
        return self


class PackagesParams(Request):
    type: Literal["packages"] | None = None
    apt: list[str] | None = None
    cargo: list[str] | None = None
    gem: list[str] | None = None
    go: list[str] | None = None
    npm: list[str] | None = None
    pip: list[str] | None = None


class CloudConfigParams(Request):
    type: Literal["cloud"]
    networking: NetworkingParams | None = None
    packages: PackagesParams | None = None


class SelfHostedConfigParams(Request):
    type: Literal["self_hosted"]


ConfigParams = Annotated[CloudConfigParams | SelfHostedConfigParams, Field(discriminator="type")]


def merge_config(
    params: CloudConfigParams | SelfHostedConfigParams | None, current: CloudConfig | SelfHostedConfig | None
) -> CloudConfig | SelfHostedConfig:
    """Apply a request config onto the stored one: omitted fields are kept, given ones replace."""
    if params is None:
        return current or CloudConfig()
    if current is not None and params.type != current.type:
        raise ConfigTypeChange(f"config.type cannot change from {current.type!r} to {params.type!r}")
    if isinstance(params, SelfHostedConfigParams):
        return SelfHostedConfig()
    base = current if isinstance(current, CloudConfig) else CloudConfig()
    networking = base.networking
    if params.networking is not None:
        n = params.networking
        networking = (
            UnrestrictedNetwork()
            if n.type == "unrestricted"
            else LimitedNetwork(
                allowed_hosts=n.allowed_hosts or [],
                allow_mcp_servers=bool(n.allow_mcp_servers),
                allow_package_managers=bool(n.allow_package_managers),
            )
        )
    packages = base.packages
    if params.packages is not None:
        given = params.packages.model_dump(exclude={"type"}, exclude_none=True)
        packages = packages.model_copy(update=given)
    if (
        isinstance(networking, LimitedNetwork)
        and not networking.allow_package_managers
        and any(getattr(packages, m) for m in PACKAGE_MANAGERS)
    ):
        raise ValueError("packages under limited networking need allow_package_managers: true")
    return CloudConfig(networking=networking, packages=packages)


class ConfigTypeChange(ValueError):
    """An update tried to change `config.type` (error code `invalid_config_type_change`)."""


class EnvironmentCreate(Request):
    name: str = Field(min_length=1, max_length=256)
    config: ConfigParams | None = None
    description: str | None = None
    metadata: Metadata | None = None
    scope: Literal["organization", "account"] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        return None if metadata is None else validate_metadata(metadata)


class EnvironmentUpdate(Request):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    config: ConfigParams | None = None
    description: str | None = None
    metadata: MetadataPatch | None = None
    scope: Literal["organization", "account"] | None = None


class Environment(Response):
    type: Literal["environment"] = "environment"
    id: str
    name: str
    description: str | None = None
    config: Config
    metadata: Metadata
    scope: Literal["organization", "account"] | None = "organization"
    created_at: Timestamp
    updated_at: Timestamp
    archived_at: Timestamp | None = None
