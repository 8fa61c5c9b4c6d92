"""What the egress proxy may add to a sandbox's requests, and the seam it gets that from.

The sandbox never holds a secret. The vault side (`vault/broker.py`) implements `CredentialBroker` for
one session; the proxy asks it, on every intercepted connection and request, for the session's current
`EgressCredentials`: placeholder substitutions (`environment_variable` credentials: the sandbox's env var
holds a placeholder, the proxy swaps in the real value on requests to the credential's hosts, in the
locations it allows) and header injections (repository tokens: an `Authorization` header for one
host and path prefix). Asking per request is what makes a rotated token or secret apply to the next
request. This module imports nothing from `vault`: the layering keeps secrets' storage out of the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from corral.sandbox.egress import _pattern as pattern
from corral.sandbox.egress import host_matches, normalize_host

__all__ = ["PLACEHOLDER_PREFIX", "CredentialBroker", "EgressCredentials", "HeaderInjection", "Substitution"]

PLACEHOLDER_PREFIX = "corral_placeholder_"
"""How every placeholder value starts. Variables holding one are set in a sandbox whatever their name
(even `ANTHROPIC_API_KEY`, which the sandbox otherwise never gets: see `local.sandbox_env`)."""


@dataclass(frozen=True)
class Substitution:
    """Replace `placeholder` by `secret` on requests to `hosts` (None: any host), in the allowed parts."""

    placeholder: str
    secret: str
    hosts: tuple[str, ...] | None
    """`allowed_hosts` patterns (`host`, IP literal, `*.domain`), or None for an unrestricted credential."""
    header: bool
    """Header values and the request target (path and query string)."""
    body: bool
    """The request body."""

    def applies_to(self, host: str) -> bool:
        if self.hosts is None:
            return True
        return any(host_matches(host, p) for p in filter(None, map(pattern, self.hosts)))


@dataclass(frozen=True)
class HeaderInjection:
    """Set header `name: value` on requests to `host`[:`port`] whose path is under `path_prefix`."""

    host: str
    port: int
    path_prefix: str
    """A path such as `/owner/repo`: matches `/owner/repo`, `/owner/repo.git/...`, `/owner/repo/...`."""
    name: str
    value: str

    def applies_to(self, host: str, port: int, path: str) -> bool:
        if normalize_host(host) != normalize_host(self.host) or port != self.port:
            return False
        path = path.split("?", 1)[0]
        prefix = self.path_prefix.rstrip("/")
        if prefix.endswith(".git"):
            prefix = prefix[:-4]
        return any(path == prefix + tail or path.startswith(prefix + tail + "/") for tail in ("", ".git"))


@dataclass(frozen=True)
class EgressCredentials:
    """A session's credentials as the proxy applies them (secrets included: keep in memory only)."""

    substitutions: tuple[Substitution, ...] = ()
    injections: tuple[HeaderInjection, ...] = ()

    def intercepts(self, host: str, port: int) -> bool:
        """Whether a connection to host:port must be opened (TLS terminated) to apply any of these."""
        return any(s.applies_to(host) for s in self.substitutions) or any(
            normalize_host(i.host) == host and i.port == port for i in self.injections
        )

    def substitutions_for(self, host: str) -> list[Substitution]:
        return [s for s in self.substitutions if s.applies_to(host)]


class CredentialBroker(Protocol):
    """One session's credentials, for its sandboxes (implemented by `vault/broker.py`)."""

    @property
    def environment(self) -> Mapping[str, str]:
        """Variables to set in the sandbox: `secret_name -> placeholder` (never a secret)."""
        ...

    async def credentials(self) -> EgressCredentials:
        """The session's credentials now (read fresh: rotations and archives apply to the next request)."""
        ...
