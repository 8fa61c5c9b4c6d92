"""Fixtures for the sandbox tests: a real bubblewrap pool under the world-searchable `sandbox_root`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.sandbox.base import Sandbox, SandboxSpec
from corral.sandbox.pool import SandboxPool


@pytest.fixture(scope="module")
async def pool(sandbox_root: Path, request: pytest.FixtureRequest) -> AsyncIterator[SandboxPool]:
    p = SandboxPool(sandbox_root / request.module.__name__.rsplit(".", 1)[-1], "bwrap")
    yield p
    await p.aclose()


@pytest.fixture
async def sbx(pool: SandboxPool) -> Sandbox:
    """The module's shared sandbox, with a fresh shell (cwd /workspace, clean env) for each test."""
    sandbox = await pool.get(SandboxSpec("shared", ""))
    restarted = await sandbox.execute("bash", {"restart": True})
    assert restarted.content == [{"type": "text", "text": "bash session restarted"}]
    return sandbox
