"""`SessionCredentials`: one session's vault credentials and repository tokens, as the egress proxy
applies them (the `CredentialBroker` of `sandbox/credentials.py`).

Placeholders: each `environment_variable` credential of the session's vaults is set in the sandbox as
`secret_name=<placeholder>`; the placeholder is `HMAC(secret key, session id, credential id)` (so it is
per session, stable across the session's sandboxes, unguessable without the server's key, and says
nothing about the secret). When two vaults hold the same `secret_name`, the vault listed first in the
session's `vault_ids` wins. Which credentials exist is fixed when a sandbox is provisioned (its
environment is); their values, hosts and injection locations are read again on every request, so an
updated secret applies at once and an archived credential stops being substituted.

Repository tokens: a `github_repository` resource's token becomes an `Authorization: Basic
base64(x-access-token:<token>)` header (what GitHub, Gitea and GitLab accept for git over HTTPS) on
requests to that repository's host and port under its path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ..sandbox.credentials import PLACEHOLDER_PREFIX, EgressCredentials, HeaderInjection, Substitution
from ..schemas.vaults import EnvironmentVariableAuth, LimitedCredentialNetworking
from ..store.store import Store
from .crypto import SecretBox, UndecryptableSecret

__all__ = ["SessionCredentials", "repository_injection"]

log = logging.getLogger(__name__)

BoxSource = Callable[[], Awaitable[SecretBox]]
"""Returns the current secret keys (e.g. `(await runtime.secret_keys()).box()`)."""


def placeholder_for(box: SecretBox, session_id: str, credential_id: str) -> str:
    digest = hmac.new(box.keys[0], f"corral-placeholder\0{session_id}\0{credential_id}".encode(), hashlib.sha256)
    return PLACEHOLDER_PREFIX + digest.hexdigest()[:40]


def repository_injection(url: str, token: str) -> HeaderInjection | None:
    """The Authorization header for git over HTTPS to the repository at `url` (None: not an https URL)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")
    return HeaderInjection(
        host=parts.hostname,
        port=parts.port or 443,
        path_prefix=parts.path or "/",
        name="Authorization",
        value=f"Basic {basic}",
    )


class SessionCredentials:
    """The broker for one sandbox of one session. Build with `await SessionCredentials.load(...)`."""

    def __init__(self, store: Store, box: BoxSource, session_id: str, vault_ids: list[str]) -> None:
        self.store = store
        self.box = box
        self.session_id = session_id
        self.vault_ids = list(vault_ids)
        self._placeholders: dict[str, tuple[str, str]] = {}
        """credential id -> (secret_name, placeholder), fixed at load."""
        self._environment: Mapping[str, str] = MappingProxyType({})

    @classmethod
    async def load(cls, store: Store, box: BoxSource, session: Any) -> SessionCredentials | None:
        """The broker for `session`, or None when it has neither vaults nor repository resources."""
        vault_ids = list(getattr(session, "vault_ids", None) or [])
        has_repos = any(r.get("type") == "github_repository" for r in getattr(session, "resources", None) or [])
        if not vault_ids and not has_repos:
            return None
        broker = cls(store, box, session.id, vault_ids)
        if vault_ids:
            keys = await box()
            env: dict[str, str] = {}
            for credential, _ in await store.credentials.environment_credentials(vault_ids):
                auth = credential.auth
                if not isinstance(auth, EnvironmentVariableAuth) or auth.secret_name in env:
                    continue
                placeholder = placeholder_for(keys, session.id, credential.id)
                env[auth.secret_name] = placeholder
                broker._placeholders[credential.id] = (auth.secret_name, placeholder)
            broker._environment = MappingProxyType(env)
        return broker

    @property
    def environment(self) -> Mapping[str, str]:
        return self._environment

    async def credentials(self) -> EgressCredentials:
        keys = await self.box()
        substitutions: list[Substitution] = []
        if self._placeholders:
            for credential, token in await self.store.credentials.environment_credentials(self.vault_ids):
                known = self._placeholders.get(credential.id)
                auth = credential.auth
                if known is None or not isinstance(auth, EnvironmentVariableAuth):
                    continue
                secret = _decrypt(keys, token, credential.id).get("secret_value")
                if not secret:
                    continue
                networking = auth.networking
                hosts = tuple(networking.allowed_hosts) if isinstance(networking, LimitedCredentialNetworking) else None
                location = auth.injection_location
                substitutions.append(Substitution(known[1], secret, hosts, location.header, location.body))
        injections: list[HeaderInjection] = []
        for resource_id, url, token in await self.store.session_resources.secrets(self.session_id):
            value = _decrypt(keys, token, resource_id).get("authorization_token")
            injection = repository_injection(url, value) if value else None
            if injection is not None:
                injections.append(injection)
        return EgressCredentials(tuple(substitutions), tuple(injections))


def _decrypt(box: SecretBox, token: str, owner: str) -> dict[str, str]:
    try:
        return box.decrypt(token)
    except UndecryptableSecret:
        log.error("the secret of %s cannot be decrypted with the configured keys; it is not applied", owner)
        return {}
