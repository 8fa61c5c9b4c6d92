"""Named crash points: places in the loop where recovery tests kill the worker process.

A test sets `CORRAL_CRASH_AT=<name>` (optionally `<name>:<n>` for the n-th time it is reached) in a
worker's environment; when the loop reaches that point the process dies with SIGKILL, as a real
crash would, leaving whatever was committed and nothing else. Unset, each point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "reach"]

POINTS = ("after_model_start", "before_model_end", "after_model_end", "after_tool_start", "after_tool_result")

_counts: dict[str, int] = {}


async def reach(name: str) -> None:
    target = os.environ.get("CORRAL_CRASH_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
