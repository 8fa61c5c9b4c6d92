"""Environment recipes, file resources and outputs, end to end: the SDK drives sessions whose (fake) model
calls tools in real bubblewrap sandboxes.

Packages come from a package index served here on the host's loopback (127.0.0.2: 127.0.0.1 is the
sandbox's own loopback, kept off the proxy): a PEP 503 simple index with a wheel built by the test, and an
npm registry with a packument and a tarball built the same way. The real `pip` and `npm` of the image
install them inside the recipe's build sandbox, through the egress proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.server
import io
import json
import tarfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from corral.sandbox.base import RecipeFailed, SandboxSpec
from corral.sandbox.egress import EgressProxy
from corral.sandbox.pool import SandboxPool
from corral.sandbox.recipes import Templates

from .conftest import API_KEY
from .fake_model import FakeModel, Reply, tool_results
from .servers import ServerThread, serving
from .turns import text, turn

HOST = "127.0.0.2"
TOOLSET = {"type": "agent_toolset_20260401"}


# ---- a package index and an npm registry, built here ---------------------------------------------------


def _wheel() -> bytes:
    files = {
        "corraltiny/__init__.py": b'VALUE = "tiny-ok"\n\n\ndef main():\n    print("cli says " + VALUE)\n',
        "corraltiny-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: corraltiny\nVersion: 1.0\n",
        "corraltiny-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: corral-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        "corraltiny-1.0.dist-info/entry_points.txt": b"[console_scripts]\ncorraltiny = corraltiny:main\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("corraltiny-1.0.dist-info/RECORD,,")
    files["corraltiny-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def _npm_tarball() -> bytes:
    package = {"name": "corral-tiny", "version": "1.0.0", "main": "index.js", "bin": {"corral-tiny": "cli.js"}}
    files = {
        "package/package.json": json.dumps(package).encode(),
        "package/index.js": b"module.exports = { value: 'npm-ok' };\n",
        "package/cli.js": b"#!/usr/bin/env node\nconsole.log('npm cli says ' + require('./index.js').value);\n",
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith("cli.js") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class PackageIndex:
    """`url`/simple/ (pip) and `url`/npm/ (npm) on 127.0.0.2; `hits` counts requests by path."""

    WHEEL = "corraltiny-1.0-py3-none-any.whl"
    TARBALL = "corral-tiny-1.0.0.tgz"

    def __init__(self) -> None:
        self.wheel = _wheel()
        self.tarball = _npm_tarball()
        self.hits: Counter[str] = Counter()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                index.hits[self.path] += 1
                found = index.route(self.path)
                if found is None:
                    self._send(404, "text/plain", b"not found\n")
                else:
                    self._send(200, *found)

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # a client that gave up (the timeout test)
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, path: str) -> tuple[str, bytes] | None:
        if path == "/simple/corraltiny/":
            sha = hashlib.sha256(self.wheel).hexdigest()
            link = f'<a href="/files/{self.WHEEL}#sha256={sha}">{self.WHEEL}</a>'
            return "text/html", f"<!DOCTYPE html><html><body>{link}</body></html>".encode()
        if path == "/simple/corralslow/":
            time.sleep(6)  # longer than the recipe timeout of the test that asks for it
            return None
        if path == f"/files/{self.WHEEL}":
            return "application/octet-stream", self.wheel
        if path == "/npm/corral-tiny":
            dist = {
                "tarball": f"{self.url}/npm/corral-tiny/-/{self.TARBALL}",
                "shasum": hashlib.sha1(self.tarball).hexdigest(),
                "integrity": "sha512-" + base64.b64encode(hashlib.sha512(self.tarball).digest()).decode(),
            }
            version = {"name": "corral-tiny", "version": "1.0.0", "bin": {"corral-tiny": "cli.js"}, "dist": dist}
            packument = {"name": "corral-tiny", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}
            return "application/json", json.dumps(packument).encode()
        if path == f"/npm/corral-tiny/-/{self.TARBALL}":
            return "application/octet-stream", self.tarball
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def index() -> Iterator[PackageIndex]:
    served = PackageIndex()
    yield served
    served.close()


@pytest.fixture(scope="module", params=["bwrap", "gvisor"])
def recipe_server(
    request: pytest.FixtureRequest,
    db_kind: str,
    fake: FakeModel,
    index: PackageIndex,
    sandbox_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerThread]:
    """A server whose sandboxes are bubblewrap's, or gVisor's: both bind the same session mounts."""
    tmp: Path = tmp_path_factory.mktemp(f"recipes-{request.param}-{db_kind}")
    with serving(
        db_kind,
        tmp,
        api_key=API_KEY,
        sandbox=request.param,
        data_dir=sandbox_root / f"recipes-{request.param}-{db_kind}",
        workers=4,
        poll_interval=0.1,
        lease_seconds=5,
        sse_ping_seconds=1.0,
        anthropic_base_url=fake.url,
        anthropic_api_key="fake-key",
        model_max_retries=0,
        sandbox_egress_allowed_networks=["127.0.0.0/8"],
        sandbox_pip_index_url=f"{index.url}/simple/",
        sandbox_npm_registry=f"{index.url}/npm/",
        sandbox_recipe_timeout=120,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def sdk(recipe_server: ServerThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=recipe_server.url, api_key=API_KEY, max_retries=0) as client:
        yield client


def pool_of(server: ServerThread) -> Any:
    return next(r.pool for r in server.runtime.tools.runners if hasattr(r, "pool"))


def new_session(sdk: anthropic.Anthropic, packages: dict[str, list[str]] | None = None, **session: Any) -> Any:
    agent = sdk.beta.agents.create(name="recipes", model="claude-sonnet-4-6", tools=[TOOLSET])
    config: dict[str, Any] = {"type": "cloud"}
    if packages is not None:
        config["packages"] = packages
    env = sdk.beta.environments.create(name=f"env-{uuid.uuid4().hex[:10]}", config=config)
    return sdk.beta.sessions.create(agent=agent.id, environment_id=env.id, **session)


def run_bash(sdk: anthropic.Anthropic, fake: FakeModel, session_id: str, *commands: str) -> list[Any]:
    """One turn in which the model runs each command (one tool call each), then ends its turn."""
    for command in commands:
        fake.reply(tool_use=[("bash", {"command": command})])
    fake.respond_with(lambda body: Reply(text=" | ".join(r for _, r in tool_results(body))))
    return turn(sdk, session_id, [text("go")], timeout=150)


def results(events: list[Any]) -> list[tuple[bool, str]]:
    return [
        (bool(e.is_error), "".join(b.text for b in e.content or [])) for e in events if e.type == "agent.tool_result"
    ]


# ---- recipes ---------------------------------------------------------------------------------------------

PROBE = (
    "python3 -c 'import corraltiny; print(corraltiny.VALUE)'; corraltiny; "
    "node -e \"console.log(require('corral-tiny').value)\"; corral-tiny; "
    "touch /opt/corral/recipe/python/x 2>&1 || echo read-only"
)
PIP_PROBE = "python3 -c 'import corraltiny; print(corraltiny.VALUE)' 2>&1"


def test_pip_and_npm_packages_are_installed_once_and_reused(
    sdk: anthropic.Anthropic, fake: FakeModel, recipe_server: ServerThread, index: PackageIndex
) -> None:
    packages = {"pip": ["corraltiny==1.0"], "npm": ["corral-tiny@1.0.0"]}
    templates = pool_of(recipe_server).templates
    builds = templates.builds
    first = new_session(sdk, packages)
    seen = run_bash(sdk, fake, first.id, PROBE)
    ((failed, output),) = results(seen)
    assert output.splitlines()[:4] == ["tiny-ok", "cli says tiny-ok", "npm-ok", "npm cli says npm-ok"], output
    assert output.splitlines()[-1] == "read-only" and not failed
    assert templates.builds == builds + 1
    assert index.hits[f"/files/{PackageIndex.WHEEL}"] >= 1
    (template,) = [p for p in templates.root.iterdir() if not p.name.startswith(".")]
    built_at = (template / ".corral-recipe.json").stat().st_mtime_ns
    wheel_hits = index.hits[f"/files/{PackageIndex.WHEEL}"]

    second = new_session(sdk, packages)  # another environment, the same recipe
    ((failed, again),) = results(run_bash(sdk, fake, second.id, PROBE))
    assert again == output and not failed
    assert templates.builds == builds + 1  # reused: no second build, nothing fetched again
    assert (template / ".corral-recipe.json").stat().st_mtime_ns == built_at
    assert index.hits[f"/files/{PackageIndex.WHEEL}"] == wheel_hits


def test_a_failing_recipe_is_an_error_result_and_a_session_error(
    sdk: anthropic.Anthropic, fake: FakeModel, recipe_server: ServerThread
) -> None:
    session = new_session(sdk, {"pip": ["corral-no-such-package"]})
    seen = run_bash(sdk, fake, session.id, "echo hi", "echo again")
    assert [failed for failed, _ in results(seen)] == [True, True]
    message = results(seen)[0][1]
    assert "installing the environment's packages failed" in message and "corral-no-such-package" in message
    errors = [e for e in seen if e.type == "session.error"]
    assert len(errors) == 2 and errors[0].error.type == "unknown_error"
    assert errors[0].error.retry_status.type == "retrying"
    assert "could not be provisioned" in errors[0].error.message
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"
    # nothing wedged: the same worker serves another session right after
    other = new_session(sdk)
    assert results(run_bash(sdk, fake, other.id, "echo fine")) == [(False, "fine")]


def test_unsupported_package_managers_are_refused_when_provisioning(
    sdk: anthropic.Anthropic, fake: FakeModel, recipe_server: ServerThread
) -> None:
    builds = pool_of(recipe_server).templates.builds
    session = new_session(sdk, {"apt": ["jq"], "pip": ["corraltiny"]})
    seen = run_bash(sdk, fake, session.id, "echo hi")
    ((failed, message),) = results(seen)
    assert failed and "corral installs pip and npm packages only" in message and "apt (jq)" in message
    assert any(e.type == "session.error" for e in seen)
    assert pool_of(recipe_server).templates.builds == builds


# ---- file resources and outputs -------------------------------------------------------------------------


def test_file_resources_are_mounted_read_only_and_follow_changes(
    sdk: anthropic.Anthropic, fake: FakeModel, recipe_server: ServerThread
) -> None:
    one = sdk.beta.files.upload(file=("one.txt", b"first file\n", "text/plain"))
    two = sdk.beta.files.upload(file=("two.csv", b"a,b\n1,2\n", "text/csv"))
    three = sdk.beta.files.upload(file=("three.txt", b"bound elsewhere\n", "text/plain"))
    inside = {"type": "file", "file_id": one.id, "mount_path": "/workspace/inputs/one.txt"}
    session = new_session(sdk, resources=[{"type": "file", "file_id": one.id}, inside])
    path = f"/mnt/session/uploads/{one.id}"
    seen = run_bash(
        sdk, fake, session.id, f"cat {path} /workspace/inputs/one.txt", f"echo x > {path}; rm -f {path}; cat {path}"
    )
    assert results(seen)[0] == (False, "first file\nfirst file")
    _, output = results(seen)[1]
    # bubblewrap says EROFS; gVisor checks the file's mode (0444, the server's) first: unchanged either way
    assert ("Read-only file system" in output or "Permission denied" in output) and output.endswith("first file")

    # added and removed between turns: the next tool call sees the change, in the same sandbox
    added = sdk.beta.sessions.resources.add(session.id, type="file", file_id=two.id, mount_path="/mnt/data/two.csv")
    sdk.beta.sessions.resources.delete(added.id, session_id=session.id)
    added = sdk.beta.sessions.resources.add(session.id, type="file", file_id=two.id, mount_path="/mnt/data/two.csv")
    first_id = session.resources[0].id
    sdk.beta.sessions.resources.delete(first_id, session_id=session.id)
    sandbox = pool_of(recipe_server).current(session.id)
    seen = run_bash(sdk, fake, session.id, "cat /mnt/data/two.csv; ls /mnt/session/uploads")
    assert results(seen) == [(False, "a,b\n1,2")]  # the deleted one is gone
    assert pool_of(recipe_server).current(session.id) is sandbox

    # a resource outside /mnt is bound when a sandbox starts: adding one starts a new sandbox
    sdk.beta.sessions.resources.add(session.id, type="file", file_id=three.id, mount_path="/data/three.txt")
    seen = run_bash(sdk, fake, session.id, "cat /data/three.txt; echo more >> /data/three.txt; cat /mnt/data/two.csv")
    _, output = results(seen)[0]
    assert output.startswith("bound elsewhere\n") and output.endswith("1,2")
    assert "/data/three.txt: Permission denied" in output or "Read-only file system" in output
    assert pool_of(recipe_server).current(session.id) is not sandbox


def test_outputs_become_files_scoped_to_the_session(
    sdk: anthropic.Anthropic, fake: FakeModel, recipe_server: ServerThread
) -> None:
    session = new_session(sdk)
    write = (
        "mkdir -p /mnt/session/outputs/charts && printf 'total: 42\\n' > /mnt/session/outputs/report.txt && "
        "printf 'x,y\\n' > /mnt/session/outputs/charts/data.csv && ln -s /etc/passwd /mnt/session/outputs/pw"
    )
    seen = run_bash(sdk, fake, session.id, write, "printf 'total: 43\\n' > /mnt/session/outputs/report.txt")
    assert [failed for failed, _ in results(seen)] == [False, False]
    files = sdk.beta.files.list(scope_id=session.id).data
    assert sorted(f.filename for f in files) == ["data.csv", "report.txt", "report.txt"]  # two versions
    assert all(f.scope is not None and f.scope.id == session.id and f.scope.type == "session" for f in files)
    reports = sorted((f for f in files if f.filename == "report.txt"), key=lambda f: f.created_at)
    assert [sdk.beta.files.download(f.id).read() for f in reports] == [b"total: 42\n", b"total: 43\n"]
    assert reports[0].mime_type == "text/plain" and reports[0].size_bytes == 10
    assert sdk.beta.files.list(scope_id="sesn_other").data == []
    # unchanged files are not captured again
    run_bash(sdk, fake, session.id, "true")
    time.sleep(0.2)
    assert len(sdk.beta.files.list(scope_id=session.id).data) == 3


# ---- the pool on its own: concurrency, other processes, prewarmed sandboxes -----------------------------


async def probe(sandbox: Any) -> str:
    result = await sandbox.execute("bash", {"command": PIP_PROBE})
    return "".join(block["text"] for block in result.content)


async def test_concurrent_provisioning_builds_a_recipe_once(sandbox_root: Path, index: PackageIndex) -> None:
    """Sessions racing for a new recipe wait for one build; a second pool on the same data directory (as
    another worker process would) waits on the file lock and reuses it; a ready sandbox of another recipe
    is never handed out."""
    root = sandbox_root / f"race-{uuid.uuid4().hex[:8]}"

    def make_pool() -> SandboxPool:
        templates = Templates(root / "templates", timeout=120, pip_index_url=f"{index.url}/simple/")
        egress = EgressProxy(allowed_networks=["127.0.0.0/8"])
        return SandboxPool(root, "bwrap", egress=egress, templates=templates, prewarm=1)

    pools = [make_pool(), make_pool()]
    wheel = f"/files/{PackageIndex.WHEEL}"
    fetched = index.hits[wheel]
    try:
        plain = await pools[0].get(SandboxSpec("plain", ""))  # leaves a ready sandbox without packages
        assert "No module named 'corraltiny'" in await probe(plain)
        specs = [SandboxSpec(f"s{i}", "", packages={"pip": ["corraltiny"]}) for i in range(4)]
        sandboxes = await asyncio.gather(*(pools[i % 2].get(spec) for i, spec in enumerate(specs)))
        assert sum(p.templates.builds for p in pools) == 1
        assert index.hits[wheel] == fetched + 1
        for sandbox in sandboxes:
            assert await probe(sandbox) == "tiny-ok"
        later = await pools[0].get(SandboxSpec("later", "", packages={"pip": ["corraltiny"]}))
        assert await probe(later) == "tiny-ok"
        assert sum(p.templates.builds for p in pools) == 1
    finally:
        for pool in pools:
            await pool.aclose()


async def test_the_unsafe_backend_installs_recipes_on_the_host_path(sandbox_root: Path, index: PackageIndex) -> None:
    root = sandbox_root / f"unsafe-{uuid.uuid4().hex[:8]}"
    templates = Templates(root / "templates", timeout=120, pip_index_url=f"{index.url}/simple/")
    pool = SandboxPool(root, "unsafe", egress=False, templates=templates)
    try:
        sandbox = await pool.get(SandboxSpec("u1", "", packages={"pip": ["corraltiny"]}))
        assert await probe(sandbox) == "tiny-ok"
        recipe = templates.recipe_for({"pip": ["corraltiny"]})
        assert recipe is not None and sandbox.spec.env["PYTHONPATH"] == f"{templates.path(recipe)}/python"
        assert templates.builds == 1 and not Path("/workspace/tmp").exists()  # scratch stayed in the build dir
    finally:
        await pool.aclose()


async def test_a_recipe_build_that_runs_out_of_time_fails_and_is_remembered(
    sandbox_root: Path, index: PackageIndex
) -> None:
    root = sandbox_root / f"slow-{uuid.uuid4().hex[:8]}"
    templates = Templates(root / "templates", timeout=2, pip_index_url=f"{index.url}/simple/")
    pool = SandboxPool(root, "bwrap", egress=EgressProxy(allowed_networks=["127.0.0.0/8"]), templates=templates)
    try:
        began = time.monotonic()
        with pytest.raises(RecipeFailed) as info:
            await pool.get(SandboxSpec("slow1", "", packages={"pip": ["corralslow"]}))
        assert "timed out after 2s" in str(info.value) and time.monotonic() - began < 15
        began = time.monotonic()
        with pytest.raises(RecipeFailed) as again:  # another session soon after: the failure, at once
            await pool.get(SandboxSpec("slow2", "", packages={"pip": ["corralslow"]}))
        assert str(again.value) == str(info.value) and time.monotonic() - began < 1
        assert templates.builds == 0  # and nothing is left of the build but its lock file
        assert [p.name for p in templates.root.iterdir() if not p.name.endswith(".lock")] == []
        assert pool.current("slow1") is None and pool.current("slow2") is None
    finally:
        await pool.aclose()
