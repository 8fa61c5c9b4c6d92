"""Host uids for sandboxes, leased machine-wide (when the server is root and gives each sandbox its own).

Several corral processes on one machine (workers sharing a database) hand out the same uid range. A uid
is one process's while it holds an exclusive `flock` on `/run/corral/uids/<uid>`: taking the lock is
the choice, so two processes starting sandboxes at the same moment can never pick the same uid, and the
lease ends by itself when its process dies. At its first lease, a `UidLeases` also skips the uids some
process runs as (what a killed server's sandboxes still run, or another program): one scan of /proc per
pool (~6 µs per process on the machine) instead of one per sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from pathlib import Path

__all__ = ["LOCK_DIR", "UidLeases", "uids_with_processes"]

LOCK_DIR = Path("/run/corral/uids")


def uids_with_processes() -> set[int]:
    """The uids that own a running process (from /proc; empty where there is none)."""
    uids = set()
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    uids.add(entry.stat(follow_symlinks=False).st_uid)
    return uids


class UidLeases:
    """The uids of `uids` this process holds, each locked until `release` (or the process's end)."""

    def __init__(self, uids: range, lock_dir: Path = LOCK_DIR) -> None:
        self.uids = uids
        self.lock_dir = lock_dir
        self._held: dict[int, int] = {}  # uid -> the locked file's descriptor
        self._busy: set[int] | None = None

    def lease(self, preferred: int | None = None) -> int:
        """A uid of the range for a new sandbox: `preferred` (the owner of a session's files) unless another
        lease has it, else the lowest uid that is free and that no process ran as when this started
        leasing. `RuntimeError` when none is left."""
        if self._busy is None:
            self._busy = uids_with_processes()
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        first = [preferred] if preferred is not None and preferred in self.uids else []
        for uid in itertools.chain(first, self.uids):
            if uid in self._held or (uid in self._busy and uid != preferred):  # its files' own sandbox may be ending
                continue
            fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another corral process's
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        raise RuntimeError(f"no free sandbox uids left in {self.uids.start}-{self.uids.stop - 1}")

    def holds(self, uid: int) -> bool:
        return uid in self._held

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)

    def release_all(self) -> None:
        for uid in list(self._held):
            self.release(uid)
