"""The egress proxy: policy matching, the proxy on its own, and real sandboxes going through it.

A test HTTP server listens on 127.0.0.2 on the host (the whole 127/8 is loopback on Linux; 127.0.0.1 and
localhost are in the sandbox's NO_PROXY, as the sandbox's own loopback). The proxy refuses host-loopback
destinations unless built with `allowed_networks`, so most tests use a proxy that allows 127.0.0.0/8, and
one checks the default refusal. Nothing here leaves the machine: names that are not allowed are refused
before any DNS lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import ipaddress
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from corral.config import Settings
from corral.sandbox.base import SandboxSpec
from corral.sandbox.egress import (
    PACKAGE_REGISTRY_HOSTS,
    EgressPolicy,
    EgressProxy,
    Refused,
    parse_head,
)
from corral.sandbox.gvisor import GvisorSandbox
from corral.sandbox.local import BwrapSandbox
from corral.sandbox.pool import Backend, SandboxPool
from corral.sandbox.runner import SandboxToolRunner
from corral.schemas.sessions import Session

from .helpers import ok, text

HOST = "127.0.0.2"
BIG = os.urandom(3 * 1024 * 1024)
LIMITED = {"type": "limited", "allowed_hosts": ["api.example.com"]}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = BIG if self.path == "/big" else f"hello {self.path} host={self.headers.get('Host')}\n".encode()
        self._send(body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(f"got {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()}\n".encode())

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """`http://127.0.0.2:<port>`: a server on the host's loopback."""
    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
async def egress_pool(sandbox_root: Path, backend: Backend) -> AsyncIterator[SandboxPool]:
    """A pool whose proxy may reach the host's loopback (the test server); policies come from the specs."""
    pool = SandboxPool(
        sandbox_root / f"egress-{backend}", backend, egress=EgressProxy(allowed_networks=["127.0.0.0/8"])
    )
    yield pool
    await pool.aclose()


async def sandbox_with(pool: SandboxPool, name: str, networking: dict[str, Any]) -> BwrapSandbox | GvisorSandbox:
    sandbox = await pool.get(SandboxSpec(name, "", networking=networking))
    assert isinstance(sandbox, (BwrapSandbox, GvisorSandbox))
    return sandbox


async def bash(sandbox: Any, command: str) -> tuple[bool, str]:
    result = await sandbox.execute("bash", {"command": command})
    return result.is_error, text(result)


# -- policy -----------------------------------------------------------------------------------------


def test_unrestricted_allows_any_host() -> None:
    policy = EgressPolicy.from_networking({"type": "unrestricted"})
    assert policy.refusal("anything.example") is None and policy.refusal("203.0.113.9") is None


def test_limited_matches_exact_hosts_ip_literals_and_wildcards() -> None:
    policy = EgressPolicy.from_networking(
        {
            "type": "limited",
            "allowed_hosts": [
                "API.Example.com.",
                "*.github.com",
                ".corp.test",
                "https://x.test:8443/path",
                "203.0.113.9",
            ],
        }
    )
    for host in ("api.example.com", "raw.github.com", "a.b.github.com", "git.corp.test", "x.test", "203.0.113.9"):
        assert policy.refusal(host) is None, host
    for host in ("example.com", "github.com", "evilgithub.com", "corp.test", "api.example.com.evil", "203.0.113.10"):
        assert policy.refusal(host) is not None, host
    why = policy.refusal("evil.example")
    assert why is not None and "evil.example is not in its allowed_hosts" in why and "api.example.com" in why
    assert "allow_package_managers is false" in why


def test_package_managers_and_mcp_servers_open_their_hosts() -> None:
    closed = EgressPolicy.from_networking(LIMITED, ["https://mcp.example.net/sse"])
    assert closed.refusal("pypi.org") is not None and closed.refusal("mcp.example.net") is not None
    opened = EgressPolicy.from_networking(
        {**LIMITED, "allow_package_managers": True, "allow_mcp_servers": True}, ["https://mcp.example.net/sse"]
    )
    for hosts in PACKAGE_REGISTRY_HOSTS.values():
        for host in hosts:
            assert opened.refusal(host.replace("*.", "us.")) is None, host
    assert opened.refusal("files.pythonhosted.org") is None and opened.refusal("registry.npmjs.org") is None
    assert opened.refusal("mcp.example.net") is None and opened.refusal("example.net") is not None


def test_unknown_networking_means_no_network() -> None:
    policy = EgressPolicy.from_networking({"type": "none", "reason": "its environment env_x could not be read"})
    why = policy.refusal("api.example.com")
    assert why == "this sandbox has no network access: its environment env_x could not be read"
    assert EgressPolicy.from_networking({}).refusal("x.test") is not None


def test_proxy_refuses_host_local_addresses_unless_allowed() -> None:
    proxy = EgressProxy()
    for address in ("127.0.0.1", "::1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "100.64.0.1", "169.254.169.254",
                    "fe80::1", "fd00::1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1"):  # fmt: skip
        assert proxy.address_refusal(ipaddress.ip_address(address)) is not None, address
    assert "loopback" in str(proxy.address_refusal(ipaddress.ip_address("127.0.0.1")))
    assert "link-local" in str(proxy.address_refusal(ipaddress.ip_address("169.254.169.254")))
    for address in ("93.184.215.14", "2606:4700::1111"):
        assert proxy.address_refusal(ipaddress.ip_address(address)) is None, address
    opened = EgressProxy(allowed_networks=["10.0.0.0/8"])
    assert opened.address_refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert opened.address_refusal(ipaddress.ip_address("127.0.0.1")) is not None


def test_request_heads() -> None:
    connect = parse_head(b"CONNECT Example.COM:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert (connect.method, connect.host, connect.port) == ("CONNECT", "example.com", 443)
    v6 = parse_head(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n")
    assert (v6.host, v6.port) == ("2001:db8::1", 8443)
    get = parse_head(
        b"GET http://user:pw@api.example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: evil.example\r\n"
        b"Proxy-Connection: keep-alive\r\nConnection: X-Drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\n"
    )
    assert (get.host, get.port) == ("api.example.com", 8080)
    assert get.head == (
        b"GET /a/b?q=1 HTTP/1.1\r\nHost: api.example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    for bad in (
        b"GET /relative HTTP/1.1\r\n\r\n",
        b"GET https://x.test/ HTTP/1.1\r\n\r\n",
        b"CONNECT x.test HTTP/1.1\r\n\r\n",
        b"CONNECT x.test:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n",
        b"hello\r\n\r\n",
    ):
        with pytest.raises(Refused) as info:
            parse_head(bad)
        assert info.value.status == 400


# -- the proxy, from the host -------------------------------------------------------------------------


async def ask(path: str, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_proxy_forwards_tunnels_and_refuses(site: str) -> None:
    proxy = EgressProxy(allowed_networks=["127.0.0.0/8"])
    try:
        port = int(site.rsplit(":", 1)[1])
        open_ = await proxy.open("s1", EgressPolicy("unrestricted"))
        assert stat.S_IMODE(os.stat(open_.path).st_mode) == 0o600
        plain = await ask(open_.path, f"GET {site}/x HTTP/1.1\r\nHost: wrong.example\r\n\r\n".encode())
        assert plain.startswith(b"HTTP/1.1 200") and plain.endswith(f"hello /x host={HOST}:{port}\n".encode())
        reader, writer = await asyncio.open_unix_connection(open_.path)
        writer.write(f"CONNECT {HOST}:{port} HTTP/1.1\r\n\r\nGET /t HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        tunnel = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        assert tunnel.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200")
        assert tunnel.endswith(b"hello /t host=h\n")
        with socket.socket() as free:  # a port nobody listens on
            free.bind((HOST, 0))
            closed_port = free.getsockname()[1]
        refused = await ask(open_.path, f"CONNECT {HOST}:{closed_port} HTTP/1.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 502") and b"cannot connect to" in refused
        bad = await ask(open_.path, b"GET /nope HTTP/1.1\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400")

        limited = await proxy.open("s2", EgressPolicy.from_networking(LIMITED))
        denied = await ask(limited.path, f"GET {site}/x HTTP/1.1\r\n\r\n".encode())
        status, _, body = denied.partition(b"\r\n\r\n")
        assert status.startswith(f"HTTP/1.1 403 Forbidden by corral egress policy: {HOST} not allowed".encode())
        assert b"X-Corral-Egress: refused" in status
        assert f"{HOST} is not in its allowed_hosts (api.example.com)".encode() in body

        strict = EgressProxy()  # the default: the host's loopback is out of reach, whatever the policy
        try:
            default = await strict.open("s3", EgressPolicy("unrestricted"))
            for target in (site, f"http://localhost:{port}"):
                answer = await ask(default.path, f"GET {target}/ HTTP/1.1\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.1 403") and b"loopback address" in answer, answer
        finally:
            await strict.aclose()

        await open_.close()
        assert not os.path.exists(open_.path)
    finally:
        await proxy.aclose()


# -- sandboxes ------------------------------------------------------------------------------------------


async def test_unrestricted_sandbox_reaches_the_server_through_the_proxy(egress_pool: SandboxPool, site: str) -> None:
    sandbox = await sandbox_with(egress_pool, "open", {"type": "unrestricted"})
    # (2>/dev/null: gVisor cannot stat a host socket for `ls -l`, "Bad file descriptor", but lists it)
    env = await ok(
        sandbox, "bash", {"command": "echo $HTTP_PROXY $https_proxy $NO_PROXY; ls -l /run/corral 2>/dev/null"}
    )
    assert env.startswith("http://127.0.0.1:3128 http://127.0.0.1:3128 localhost,127.0.0.1,::1")
    assert env.count("\n") == 2 and "proxy.sock" in env  # its own socket, nothing else of the host
    assert await ok(sandbox, "bash", {"command": f"curl -sS {site}/plain"}) == f"hello /plain host={site[7:]}"
    assert await ok(sandbox, "bash", {"command": f"curl -sS --proxytunnel {site}/tunnel"}) == (
        f"hello /tunnel host={site[7:]}"
    )
    py = f"python3 -c \"import urllib.request; print(urllib.request.urlopen('{site}/py').read().decode())\""
    assert await ok(sandbox, "bash", {"command": py}) == f"hello /py host={site[7:]}"


async def test_limited_sandbox_gets_a_403_that_says_why(egress_pool: SandboxPool, site: str) -> None:
    sandbox = await sandbox_with(egress_pool, "limited", LIMITED)
    failed, out = await bash(sandbox, f"curl -sS -i {site}/x")
    assert not failed and out.startswith(f"HTTP/1.1 403 Forbidden by corral egress policy: {HOST} not allowed")
    expected = f'corral egress proxy: the environment\'s networking is "limited" and {HOST} is not in its allowed'
    assert expected in out
    failed, out = await bash(sandbox, f"curl -sS -v --proxytunnel {site}/x 2>&1")
    assert failed and "CONNECT tunnel failed, response 403" in out and f"{HOST} not allowed" in out
    failed, out = await bash(sandbox, "curl -sS -v https://pypi.org/simple/ 2>&1")  # refused before any lookup
    assert failed and "403 Forbidden by corral egress policy: pypi.org not allowed" in out
    py = "python3 -c \"import urllib.request; urllib.request.urlopen('https://api.evil.test/')\" 2>&1 | tail -1"
    assert "Tunnel connection failed: 403 Forbidden by corral egress policy: api.evil.test not allowed" in (
        await ok(sandbox, "bash", {"command": py})
    )


async def test_limited_sandbox_reaches_an_allowed_host(egress_pool: SandboxPool, site: str) -> None:
    sandbox = await sandbox_with(egress_pool, "allowed", {"type": "limited", "allowed_hosts": [HOST]})
    assert await ok(sandbox, "bash", {"command": f"curl -sS {site}/ok"}) == f"hello /ok host={site[7:]}"
    assert await ok(sandbox, "bash", {"command": f"curl -sS -p {site}/ok"}) == f"hello /ok host={site[7:]}"


async def test_no_route_around_the_proxy(egress_pool: SandboxPool, site: str) -> None:
    sandbox = await sandbox_with(egress_pool, "direct", {"type": "unrestricted"})
    port = site.rsplit(":", 1)[1]
    for target in (site, f"http://127.0.0.1:{port}"):
        failed, out = await bash(sandbox, f"curl -sS --noproxy '*' --max-time 5 {target}/")
        assert failed and "Couldn't connect to server" in out, out
    probe = (
        "python3 -c \"import socket\ntry:\n socket.create_connection(('93.184.215.14', 80), timeout=3)\n"
        'except OSError as e: print(type(e).__name__, e.errno)"'
    )
    unreachable = await ok(sandbox, "bash", {"command": probe})
    assert unreachable in ("OSError 101", "OSError 113")  # ENETUNREACH (Linux), EHOSTUNREACH (gVisor)


async def test_default_proxy_never_reaches_the_hosts_loopback(sandbox_root: Path, backend: Backend, site: str) -> None:
    pool = SandboxPool(
        sandbox_root / f"egress-default-{backend}", backend
    )  # the proxy a server gets without the setting
    try:
        sandbox = await pool.get(SandboxSpec("strict", ""))
        port = site.rsplit(":", 1)[1]
        for target in (site, f"http://localhost:{port}", f"http://127.0.0.1:{port}"):
            failed, out = await bash(sandbox, f"curl -sS -i --noproxy '' {target}/")
            assert not failed and out.startswith("HTTP/1.1 403 Forbidden by corral egress policy"), out
            assert "loopback address" in out and "never connects to its loopback, private or link-local" in out
        failed, out = await bash(sandbox, "curl -sS -i http://169.254.169.254/latest/meta-data/")
        assert out.startswith("HTTP/1.1 403") and "169.254.169.254 is a link-local address" in out
    finally:
        await pool.aclose()


async def test_large_bodies_and_parallel_connections(egress_pool: SandboxPool, site: str) -> None:
    sandbox = await sandbox_with(egress_pool, "bulk", {"type": "unrestricted"})
    digest = hashlib.sha256(BIG).hexdigest()
    down = await ok(sandbox, "bash", {"command": f"curl -sS -p {site}/big | sha256sum"})
    assert down.split()[0] == digest
    up = await ok(sandbox, "bash", {"command": f"head -c 2000000 /dev/zero | curl -sS --data-binary @- {site}/up"})
    assert up == f"got 2000000 bytes sha256={hashlib.sha256(bytes(2000000)).hexdigest()}"
    parallel = f"for i in $(seq 20); do curl -sS {site}/p$i & done; wait"
    lines = (await ok(sandbox, "bash", {"command": parallel})).splitlines()
    assert sorted(lines) == sorted(f"hello /p{i} host={site[7:]}" for i in range(1, 21))


async def test_listener_goes_away_with_its_sandbox(egress_pool: SandboxPool) -> None:
    sandbox = await sandbox_with(egress_pool, "gone", {"type": "unrestricted"})
    assert sandbox.egress is not None
    path = sandbox.egress.path
    assert os.path.exists(path)
    if os.geteuid() == 0:
        assert os.stat(path).st_uid == sandbox.host_uid
    await egress_pool.destroy("gone")
    assert not os.path.exists(path)


async def test_pool_without_egress_has_no_way_out(sandbox_root: Path, backend: Backend, site: str) -> None:
    pool = SandboxPool(sandbox_root / f"egress-off-{backend}", backend, egress=False)
    try:
        sandbox = await pool.get(SandboxSpec("off", ""))
        assert await ok(sandbox, "bash", {"command": "echo ${HTTP_PROXY:-none}; ls /run/corral 2>&1 | wc -l"}) == (
            "none\n1"
        )
        failed, out = await bash(sandbox, f"curl -sS -x http://127.0.0.1:3128 {site}/")
        assert failed and "Couldn't connect to server" in out
    finally:
        await pool.aclose()


# -- the runner reads the session's environment ----------------------------------------------------------


async def test_runner_applies_the_environment_to_the_next_sandbox(
    sandbox_root: Path, backend: Backend, site: str
) -> None:
    environments: dict[str, Any] = {
        "env_a": SimpleNamespace(config=SimpleNamespace(type="cloud", networking=SimpleNamespace(**LIMITED)))
    }
    environments["env_a"].config.networking.model_dump = lambda mode: dict(LIMITED)

    async def load(env_id: str) -> Any:
        if env_id not in environments:
            raise LookupError(f"environment {env_id} not found")
        return environments[env_id]

    settings = Settings(
        data_dir=sandbox_root / f"egress-runner-{backend}",
        sandbox=backend,
        sandbox_egress_allowed_networks=["127.0.0.0/8"],
    )
    runner = SandboxToolRunner.from_settings(settings, environments=load)
    session = cast(Session, SimpleNamespace(id="envrun", environment_id="env_a", agent=None))
    try:
        first = await runner.run(session, "bash", {"command": f"curl -sS {site}/a"})
        assert f"{HOST} is not in its allowed_hosts (api.example.com)" in text(first)
        opened = {"type": "limited", "allowed_hosts": [HOST]}
        environments["env_a"].config.networking.model_dump = lambda mode: opened
        same = await runner.run(session, "bash", {"command": f"curl -sS {site}/b"})
        assert f"{HOST} is not in its allowed_hosts" in text(same)  # the running sandbox keeps its policy
        await runner.pool.destroy("envrun", remove_workdir=False)
        after = await runner.run(session, "bash", {"command": f"curl -sS {site}/c"})
        assert text(after) == f"hello /c host={site[7:]}"  # the next sandbox gets the new one

        lost = cast(Session, SimpleNamespace(id="envlost", environment_id="env_gone", agent=None))
        out = await runner.run(lost, "bash", {"command": f"curl -sS {site}/d"})
        assert "this sandbox has no network access: its environment env_gone could not be read" in text(out)
    finally:
        await runner.aclose()
