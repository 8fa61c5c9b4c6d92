"""Sandbox cgroups left behind by killed servers are swept; those in use or just made are not."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

from corral.sandbox import cgroups
from corral.sandbox.limits import SandboxLimits


async def test_leftover_cgroups_are_swept_and_live_or_young_ones_kept() -> None:
    version = cgroups.detect()
    assert version is not None  # cgroups are writable here and in CI
    tag = uuid.uuid4().hex[:8]
    made = {k: cgroups.Cgroup.create(SandboxLimits(), name=f"sbx-{k}-{tag}") for k in ("stale", "young", "busy")}
    stale, young, busy = made["stale"], made["young"], made["busy"]
    assert stale is not None and young is not None and busy is not None
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    try:
        busy.add(sleeper.pid)
        long_ago = time.time() - 2 * cgroups.LEFTOVER_AGE
        for d in [*stale.dirs, *busy.dirs]:
            os.utime(d, (long_ago, long_ago))
        assert cgroups.sweep_leftovers(version) >= len(stale.dirs)  # other leftovers of this machine may go too
        assert not any(d.exists() for d in stale.dirs)
        assert all(d.exists() for d in [*young.dirs, *busy.dirs])
        assert busy.pids() == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
        for group in made.values():
            await group.remove()
