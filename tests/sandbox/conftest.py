"""Fixtures for the sandbox tests: a real bubblewrap pool under a world-searchable temp dir.

The pool root cannot live under pytest's tmp_path when we run as root: that sits in a 0700 directory and
each sandbox runs as its own unprivileged uid, which must be able to reach its workdir.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.sandbox.base import Sandbox, SandboxSpec
from corral.sandbox.pool import SandboxPool


@pytest.fixture(scope="session")
def sandbox_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="corral-sbx-test-"))
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


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
