"""Where the secret keys come from: `CORRAL_SECRET_KEY`, or a key file (default `<data dir>/secret.key`).

The key file holds one Fernet key per line; the first encrypts, all decrypt. It is created with mode
0600 on the server's first start. A `KeyRing` re-reads the file whenever it changes on disk, so a
`corral secrets rotate` run by another process is picked up without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from ..config import Settings
from .crypto import SecretBox, generate_key, parse_keys

__all__ = ["KeyRing", "key_file_path"]

log = logging.getLogger("corral.vault")

KEY_FILE_HEADER = (
    "# corral secret keys (Fernet). The first line encrypts; every line decrypts.\n"
    "# Keep this file private (mode 0600) and backed up: stored credentials cannot be read without it.\n"
)


def key_file_path(settings: Settings) -> Path:
    return Path(settings.secret_key_file or Path(settings.data_dir) / "secret.key").expanduser()


class KeyRing:
    def __init__(self, *, path: Path, env_keys: str | None = None) -> None:
        self.path = path
        self.env_keys = env_keys
        self._box: SecretBox | None = None
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, path: Path | None = None) -> KeyRing:
        env = settings.secret_key.get_secret_value() if settings.secret_key else None
        return cls(path=path or key_file_path(settings), env_keys=env or None)

    @property
    def source(self) -> str:
        return "CORRAL_SECRET_KEY" if self.env_keys else str(self.path)

    @property
    def from_env(self) -> bool:
        return bool(self.env_keys)

    def exists(self) -> bool:
        return self.from_env or self.path.exists()

    def box(self) -> SecretBox:
        """The current keys (the key file is read again if it changed since the last call)."""
        if self.env_keys:
            if self._box is None:
                self._box = SecretBox(parse_keys(self.env_keys, "CORRAL_SECRET_KEY"))
            return self._box
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._box is None or stamp != self._stamp:
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("secret key file %s is readable by other users; chmod 600 it", self.path)
            self._box = SecretBox(parse_keys(self.path.read_text(), str(self.path)))
            self._stamp = stamp
        return self._box

    def create(self) -> bool:
        """Make a key file with one new key (mode 0600); False if one already exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(KEY_FILE_HEADER + generate_key() + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def write(self, keys: list[bytes]) -> None:
        """Replace the key file atomically (a 0600 temporary file renamed over it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".secret-key-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(KEY_FILE_HEADER + "".join(k.decode("ascii") + "\n" for k in keys))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._box = None
