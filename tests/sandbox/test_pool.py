"""SandboxPool: lazy provisioning, caching, idle release, destroy, and per-session uids."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from corral.sandbox.base import SandboxSpec
from corral.sandbox.credentials import EgressCredentials
from corral.sandbox.local import UID_BASE
from corral.sandbox.pool import Backend, SandboxPool
from corral.sandbox.uids import UidLeases

from .helpers import ISOLATED, ok


async def test_get_provisions_lazily_and_caches(pool: SandboxPool) -> None:
    assert "lazy" not in {s for s in pool._entries}
    first, again = await asyncio.gather(pool.get(SandboxSpec("lazy", "")), pool.get(SandboxSpec("lazy", "")))
    assert first is again
    assert await pool.get(SandboxSpec("lazy", "")) is first
    assert pool.workdir_for("lazy").is_dir()
    assert first.spec.workdir == str(pool.workdir_for("lazy"))


def test_workdir_layout_and_bad_ids(pool: SandboxPool) -> None:
    assert pool.workdir_for("sesn_01ABC") == pool.root_dir / "sessions" / "sesn_01ABC" / "workspace"
    for bad in ("../x", "a/b", "", ".", "x" * 200):
        with pytest.raises(ValueError):
            pool.workdir_for(bad)


async def test_release_idle_keeps_workdir_and_uid(sandbox_root: Path, backend: Backend) -> None:
    pool = SandboxPool(sandbox_root / f"idle-{backend}", backend, idle_seconds=0.2)
    try:
        first = await pool.get(SandboxSpec("idle", ""))
        await ok(first, "write", {"file_path": "notes.md", "content": "kept"})
        assert await pool.release_idle() == []
        await asyncio.sleep(0.3)
        busy = asyncio.create_task(first.execute("bash", {"command": "sleep 0.5"}))
        await asyncio.sleep(0.1)
        assert await pool.release_idle() == []  # a running call is not idleness
        await busy
        await asyncio.sleep(0.3)
        assert await pool.release_idle() == ["idle"]
        assert not first.alive() and len(pool) == 0
        if isinstance(first, ISOLATED) and first.host_uid is not None:  # no lease while it has no sandbox
            assert not pool._leases.holds(first.host_uid)
        second = await pool.get(SandboxSpec("idle", ""))
        assert second is not first
        assert await ok(second, "read", {"file_path": "notes.md"}) == "kept"
        assert isinstance(first, ISOLATED) and isinstance(second, ISOLATED)
        assert first.host_uid == second.host_uid
    finally:
        await pool.aclose()


async def test_destroy_removes_the_session_directory(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("doomed", ""))
    await ok(sandbox, "write", {"file_path": "a/b.txt", "content": "x"})
    await pool.destroy("doomed")
    assert not sandbox.alive()
    assert not pool.workdir_for("doomed").parent.exists()
    await pool.destroy("doomed")  # idempotent
    fresh = await pool.get(SandboxSpec("doomed", ""))
    assert "no such file" in (await fresh.execute("read", {"file_path": "a/b.txt"})).content[0]["text"]


async def test_destroy_can_keep_the_workdir(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("kept", ""))
    await ok(sandbox, "write", {"file_path": "f", "content": "x"})
    await pool.destroy("kept", remove_workdir=False)
    assert (pool.workdir_for("kept") / "f").read_text() == "x"


@pytest.mark.skipif(os.geteuid() != 0, reason="per-sandbox uids only exist when the server is root")
async def test_uids_are_unique_and_reused_from_the_workdir_owner(sandbox_root: Path) -> None:
    root = sandbox_root / "uids"
    pool = SandboxPool(root)
    try:
        a = await pool.get(SandboxSpec("a", ""))
        b = await pool.get(SandboxSpec("b", ""))
        assert isinstance(a, ISOLATED) and isinstance(b, ISOLATED)
        assert a.host_uid is not None and b.host_uid is not None
        assert a.host_uid != b.host_uid and min(a.host_uid, b.host_uid) >= UID_BASE
    finally:
        await pool.aclose()
    # a new pool (a server restart) finds b's workdir owned by b's uid and keeps it: no chown needed
    restarted = SandboxPool(root)
    try:
        b_again = await restarted.get(SandboxSpec("b", ""))
        assert isinstance(b_again, ISOLATED) and b_again.host_uid == b.host_uid
    finally:
        await restarted.aclose()


async def test_closed_pool_refuses(sandbox_root: Path, backend: Backend) -> None:
    pool = SandboxPool(sandbox_root / f"closed-{backend}", backend)
    sandbox = await pool.get(SandboxSpec("x", ""))
    await pool.aclose()
    assert not sandbox.alive()
    with pytest.raises(RuntimeError):
        await pool.get(SandboxSpec("x", ""))


def test_unknown_backend(sandbox_root: Path) -> None:
    with pytest.raises(ValueError):
        SandboxPool(sandbox_root, "docker")  # type: ignore[arg-type]


async def ready(pool: SandboxPool, count: int = 1) -> None:
    """Wait until the pool has `count` prewarmed sandboxes of some recipe."""
    for _ in range(200):
        if any(len(slots) >= count for slots in pool._warm.values()):
            return
        await asyncio.sleep(0.025)
    raise AssertionError("no sandbox was prewarmed")


async def test_prewarmed_sandbox_is_adopted_by_a_new_session(sandbox_root: Path, backend: Backend) -> None:
    pool = SandboxPool(sandbox_root / f"prewarm-{backend}", backend, prewarm=1)
    try:
        first = await pool.get(SandboxSpec("first", ""))
        await ready(pool)
        (warm,) = next(iter(pool._warm.values()))
        adopted = await pool.get(SandboxSpec("second", ""))
        assert adopted is warm.sandbox and adopted is not first
        assert not warm.home.exists()  # moved to the session's place
        assert adopted.spec.session_id == "second" and adopted.spec.workdir == str(pool.workdir_for("second"))
        await ok(adopted, "bash", {"command": "echo mine > own.txt && pwd"})
        assert (pool.workdir_for("second") / "own.txt").read_text() == "mine\n"
        if os.geteuid() == 0:  # the directory keeps the uid the sandbox runs as, and it is unique
            assert pool.workdir_for("second").stat().st_uid == pool._uids["second"] != pool._uids["first"]
        await ready(pool)  # topped up again
    finally:
        await pool.aclose()
    assert not any((pool.root_dir / "warm").iterdir())  # ready sandboxes' directories are removed


class Broker:
    """A session's credentials as the pool sees them (`CredentialBroker`; `vault/broker.py` in the server)."""

    def __init__(self, environment: dict[str, str]) -> None:
        self._environment = environment

    @property
    def environment(self) -> dict[str, str]:
        return self._environment

    async def credentials(self) -> EgressCredentials:
        return EgressCredentials()


async def test_a_session_with_credentials_adopts_a_ready_sandbox_and_gets_them_only_then(
    sandbox_root: Path, backend: Backend
) -> None:
    """No sandbox is started with a session's credentials, yet a session with some adopts one of its
    recipe: their placeholder variables reach its shells and their broker its egress socket; the
    sandbox readied after it, for anyone, has neither."""
    pool = SandboxPool(sandbox_root / f"prewarm-vault-{backend}", backend, prewarm=1)
    placeholder = {"GITHUB_TOKEN": "corral_placeholder_0123456789"}
    broker = Broker(placeholder)
    try:
        await pool.get(SandboxSpec("seed", ""))
        await ready(pool)
        (warm,) = next(iter(pool._warm.values()))
        adopted = await pool.get(SandboxSpec("vaulted", "", env=dict(placeholder), credentials=broker))
        assert adopted is warm.sandbox and adopted.spec.credentials is broker and isinstance(adopted, ISOLATED)
        assert await ok(adopted, "bash", {"command": "echo $GITHUB_TOKEN"}) == placeholder["GITHUB_TOKEN"]
        assert adopted.egress is not None and adopted.egress.broker is broker
        await ready(pool)  # topped up for the recipe without the credentials
        (again,) = [w.sandbox for slots in pool._warm.values() for w in slots]
        assert isinstance(again, ISOLATED) and again.egress is not None and again.egress.broker is None
        assert not again.spec.env
        plain = await pool.get(SandboxSpec("plain", ""))
        assert plain is again
        assert await ok(plain, "bash", {"command": "echo ${GITHUB_TOKEN:-unset}"}) == "unset"
    finally:
        await pool.aclose()


async def test_sessions_with_files_or_another_recipe_get_their_own_sandbox(
    sandbox_root: Path, backend: Backend
) -> None:
    pool = SandboxPool(sandbox_root / f"prewarm-skip-{backend}", backend, prewarm=1)
    try:
        await pool.get(SandboxSpec("seed", ""))
        await ready(pool)
        (warm,) = next(iter(pool._warm.values()))
        pool.workdir_for("old").mkdir(parents=True)
        (pool.workdir_for("old") / "kept.txt").write_text("from before")
        old = await pool.get(SandboxSpec("old", ""))
        assert old is not warm.sandbox
        assert await ok(old, "read", {"file_path": "kept.txt"}) == "from before"
        limited = {"type": "limited", "allowed_hosts": ["example.org"]}
        other = await pool.get(SandboxSpec("other", "", networking=limited))
        assert other is not warm.sandbox and warm.home.exists()
    finally:
        await pool.aclose()


async def test_two_pools_starting_sandboxes_at_once_never_share_a_uid(sandbox_root: Path, backend: Backend) -> None:
    """Two corral processes on one machine (here two pools) hand out the same range: a uid is leased
    with a lock (`uids.UidLeases`), so choosing it and holding it are one step, even when both start
    sandboxes at the same moment."""
    if os.geteuid() != 0:
        pytest.skip("only root hands sandboxes their own uids")
    pools = [SandboxPool(sandbox_root / f"twin-{i}-{backend}", backend, egress=False) for i in range(2)]
    try:
        sandboxes = await asyncio.gather(*(pools[i % 2].get(SandboxSpec(f"t{i}", "")) for i in range(6)))
        uids = [getattr(s, "host_uid", None) for s in sandboxes]
        assert None not in uids and len(set(uids)) == 6, uids
    finally:
        for pool in pools:
            await pool.aclose()


def test_a_uid_leased_elsewhere_is_skipped_until_released(tmp_path: Path) -> None:
    first, second = UidLeases(range(300000, 300003), tmp_path), UidLeases(range(300000, 300003), tmp_path)
    assert first.lease() == 300000
    assert second.lease(preferred=300000) == 300001  # the files' owner is another process's now
    first.release(300000)
    assert second.lease(preferred=300000) == 300000
    assert first.lease() == 300002
    with pytest.raises(RuntimeError, match="no free sandbox uids"):
        first.lease()
    second.release_all()
    assert first.lease() == 300000


async def test_uids_running_processes_elsewhere_are_not_handed_out(sandbox_root: Path, backend: Backend) -> None:
    """Another corral process's pool hands out the same range: a uid in use on the machine is skipped."""
    if os.geteuid() != 0:
        pytest.skip("only root hands sandboxes their own uids")
    import subprocess

    squatter = subprocess.Popen(["sleep", "30"], user=UID_BASE, group=UID_BASE)
    pool = SandboxPool(sandbox_root / f"squatted-{backend}", backend)
    try:
        sandbox = await pool.get(SandboxSpec("fresh", ""))
        assert isinstance(sandbox, ISOLATED) and sandbox.host_uid not in (None, UID_BASE)
        assert pool.workdir_for("fresh").stat().st_uid == sandbox.host_uid
    finally:
        squatter.kill()
        squatter.wait()
        await pool.aclose()
