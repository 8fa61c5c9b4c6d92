"""Prefixed, time-ordered identifiers in the API's shapes (`agent_…`, `sesn_…`, `sevt_…`).

The part after the prefix is 24 base-62 characters: 9 encode the creation time in milliseconds,
15 are random. Ids made later sort later, which keeps list order and id order in agreement and
spreads index inserts well on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import secrets
import threading
import time

__all__ = ["PREFIXES", "has_prefix", "new_id"]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

PREFIXES = {
    "agent": "agent_",
    "environment": "env_",
    "session": "sesn_",
    "event": "sevt_",
    "thread": "sthr_",
    "resource": "sesrsc_",
    "outcome": "outc_",
    "work": "work_",
    "vault": "vlt_",
    "credential": "vcrd_",
    "file": "file_",
    "request": "req_",
    "api_key": "key_",
}


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


class _Monotonic:
    """Within one millisecond, later ids still sort later (the random part counts up)."""

    def __init__(self) -> None:
        self.millis = 0
        self.random = 0
        self.lock = threading.Lock()

    def next(self) -> tuple[int, int]:
        millis = time.time_ns() // 1_000_000
        with self.lock:
            if millis <= self.millis:
                millis, self.random = self.millis, self.random + 1
            else:
                self.random = secrets.randbits(80)
            self.millis = millis
            return millis, self.random


_clock = _Monotonic()


def new_id(kind: str) -> str:
    """A new id for an object of `kind` (a key of `PREFIXES`)."""
    millis, rand = _clock.next()
    return PREFIXES[kind] + _base62(millis, 9) + _base62(rand, 15)


def has_prefix(value: str, kind: str) -> bool:
    return value.startswith(PREFIXES[kind])
