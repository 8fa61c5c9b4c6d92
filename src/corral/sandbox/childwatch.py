"""How asyncio learns that a sandbox's host process exited, on Python 3.11: pidfds, as on 3.12 and later.

Python 3.11's default `ThreadedChildWatcher` starts a thread per child process, which blocks in `waitpid`
for the child's whole life: one thread per live sandbox, and its start and hand-off cost 1-2 ms of every
sandbox start here (`launch` took 1.5-2.3 ms with it, 0.6 ms with pidfds). Python 3.12 made a pidfd
watcher the default (one descriptor per child, read by whichever event loop started it); 3.11's own
`PidfdChildWatcher` serves a single, attached loop only, while corral may run several (tests run a
server per thread). So on 3.11 `install()` puts in `LoopPidfdWatcher`, the 3.12 behaviour.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import warnings
from typing import Any

__all__ = ["LoopPidfdWatcher", "install"]

log = logging.getLogger(__name__)


class LoopPidfdWatcher(asyncio.AbstractChildWatcher):
    """Waits for each child through a pidfd registered with the event loop that started the child."""

    def __enter__(self) -> LoopPidfdWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        return None

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        return None  # bound to no loop: each child to the loop running when it was started

    def add_child_handler(self, pid: int, callback: Any, *args: Any) -> None:
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        loop.add_reader(pidfd, self._reap, loop, pid, pidfd, callback, args)

    def remove_child_handler(self, pid: int) -> bool:
        return True  # asyncio never calls it

    @staticmethod
    def _reap(loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, callback: Any, args: tuple[Any, ...]) -> None:
        loop.remove_reader(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere
            log.warning("exit status of child process %d was already collected: reporting 255", pid)
            returncode = 255
        finally:
            os.close(pidfd)
        callback(pid, returncode, *args)


@functools.cache
def install() -> bool:
    """Make asyncio watch child processes with `LoopPidfdWatcher` (once per process); False where that
    does not apply: Python 3.12+ (already does), or pidfds unavailable (no `pidfd_open`, or refused)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # e.g. refused by a seccomp policy
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(LoopPidfdWatcher())
    return True
