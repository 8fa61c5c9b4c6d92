"""Encryption of credential secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`.

A `SecretBox` holds one or more keys. The first encrypts; every key decrypts (`MultiFernet`), so
secrets written under an older key stay readable while they are re-encrypted under a new one.
Keys are Fernet keys: 32 random bytes, URL-safe base64 (44 characters).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["InvalidKey", "SecretBox", "UndecryptableSecret", "fingerprint", "generate_key", "parse_keys"]


class InvalidKey(ValueError):
    """A configured key is not a Fernet key. The message never contains the key."""


class UndecryptableSecret(Exception):
    """No configured key decrypts a stored secret (a key was lost, or the wrong one is configured)."""


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key (to tell keys apart in messages and logs)."""
    return hashlib.sha256(key).hexdigest()[:12]


def parse_keys(text: str, source: str) -> list[bytes]:
    """Keys separated by commas or newlines; blank entries and `#` comment lines are skipped."""
    keys: list[bytes] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split(","):
            part = part.strip()
            if not part:
                continue
            key = part.encode("ascii", "replace")
            try:
                Fernet(key)
            except (ValueError, TypeError):
                raise InvalidKey(
                    f"{source}: entry {len(keys) + 1} is not a Fernet key (32 bytes, URL-safe base64, "
                    "44 characters; make one with `corral secrets generate-key`)"
                ) from None
            keys.append(key)
    if not keys:
        raise InvalidKey(f"{source} holds no key")
    return keys


class SecretBox:
    """Encrypts a credential's secret fields (a JSON object) into one token, and back."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise InvalidKey("no secret key configured")
        self.keys = list(keys)
        self._primary = Fernet(self.keys[0])
        self._all = MultiFernet([Fernet(k) for k in self.keys])

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the key that encrypts."""
        return fingerprint(self.keys[0])

    def encrypt(self, secret: dict[str, str]) -> str:
        return self._primary.encrypt(json.dumps(secret, separators=(",", ":")).encode()).decode("ascii")

    def decrypt(self, token: str) -> dict[str, str]:
        try:
            plain = self._all.decrypt(token.encode("ascii"))
        except InvalidToken:
            raise UndecryptableSecret("no configured secret key decrypts this secret") from None
        value: dict[str, str] = json.loads(plain)
        return value

    def can_decrypt(self, token: str) -> bool:
        try:
            self._all.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def is_current(self, token: str) -> bool:
        """Whether `token` was encrypted under the first key (rotation has nothing to do for it)."""
        try:
            self._primary.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        """Decrypt with any key, encrypt again with the first."""
        try:
            return self._all.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise UndecryptableSecret("no configured secret key decrypts this secret") from None
