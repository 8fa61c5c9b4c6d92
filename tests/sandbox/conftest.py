"""Fixtures for the sandbox tests: a real pool of each isolating backend (bubblewrap, gVisor) under the
world-searchable `sandbox_root`. Every test that takes `pool`, `sbx` or `backend` runs on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.sandbox.base import Sandbox, SandboxSpec
from corral.sandbox.pool import Backend, SandboxPool

BACKENDS = ["bwrap", "gvisor"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """An isolating backend; gVisor needs runsc (scripts/test installs it) and is never skipped."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def pool(sandbox_root: Path, backend: Backend, request: pytest.FixtureRequest) -> AsyncIterator[SandboxPool]:
    p = SandboxPool(sandbox_root / f"{request.module.__name__.rsplit('.', 1)[-1]}-{backend}", backend)
    yield p
    await p.aclose()


@pytest.fixture
async def sbx(pool: SandboxPool) -> Sandbox:
    """The module's shared sandbox, with a fresh shell (cwd /workspace, clean env) for each test."""
    sandbox = await pool.get(SandboxSpec("shared", ""))
    restarted = await sandbox.execute("bash", {"restart": True})
    assert restarted.content == [{"type": "text", "text": "bash session restarted"}]
    return sandbox
