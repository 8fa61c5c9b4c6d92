"""The egress proxy: the only way out of a sandbox, and where the environment's networking policy is applied.

Sandboxes keep `--unshare-net` (nothing but their own loopback). Each one gets a Unix socket of this proxy
bind-mounted at `/run/corral/proxy.sock`; the in-sandbox helper relays TCP connections made to
127.0.0.1:3128 to it, and `HTTP_PROXY`/`HTTPS_PROXY` (and the lower-case forms) point there, so curl, pip,
git, npm and Python clients go through it. One proxy per worker process (owned by the `SandboxPool`),
started lazily by the first sandbox; per sandbox it costs one socket bind. The socket a connection
arrives on tells the proxy which session, hence which policy, it belongs to.

What the proxy speaks: `CONNECT host:port` (a tunnel, used for HTTPS: TLS is passed through, not
inspected, unless the session has credentials to apply to that host: then `intercept.py` terminates it)
and plain-HTTP requests with an absolute URI (`GET http://host/path`), forwarded one request per
connection with `Connection: close` and the `Host` header set from the URI. Anything else gets a 400.

Decisions, in order (see `EgressPolicy.refusal` and `EgressProxy._connect`):
1. The environment's policy, on the host *name* the client asked for (the CONNECT target or the URI's
   host): `unrestricted` allows any; `limited` allows the `allowed_hosts` (exact names or IP literals,
   and `*.example.com` for any subdomain of example.com), plus `PACKAGE_REGISTRY_HOSTS` when
   `allow_package_managers` is true, plus the hosts of the agent's MCP servers when `allow_mcp_servers` is.
2. The proxy resolves the name itself and connects only to *global* unicast addresses: loopback,
   private (RFC 1918, ULA, CGNAT), link-local (cloud metadata), multicast and reserved ranges are refused
   whatever the policy, since the proxy runs on the host and would otherwise hand the sandbox the host's
   own services (the corral API, the database). `allowed_networks` (operator setting
   `CORRAL_SANDBOX_EGRESS_ALLOWED_NETWORKS`; tests use it for 127.0.0.0/8) lifts that for given networks.
   The checked address is the one connected to, so DNS cannot change the answer in between.
Refusals are HTTP 403 responses whose reason phrase and body say which host was refused and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from corral.sandbox.credentials import CredentialBroker
    from corral.sandbox.tls import CertificateAuthority

__all__ = [
    "FORWARDER_PORT",
    "PACKAGE_REGISTRY_HOSTS",
    "SANDBOX_PROXY_SOCKET",
    "EgressListener",
    "EgressPolicy",
    "EgressProxy",
    "proxy_env",
]

log = logging.getLogger(__name__)

SANDBOX_PROXY_SOCKET = "/run/corral/proxy.sock"
"""Where a sandbox sees its own socket of the proxy."""
FORWARDER_PORT = 3128
"""The in-sandbox forwarder listens on 127.0.0.1 at this port (the HTTP(S)_PROXY address)."""

PACKAGE_REGISTRY_HOSTS: dict[str, tuple[str, ...]] = {
    "apt": (
        "deb.debian.org",
        "security.debian.org",
        "archive.ubuntu.com",
        "*.archive.ubuntu.com",
        "security.ubuntu.com",
        "ports.ubuntu.com",
    ),
    "cargo": ("crates.io", "index.crates.io", "static.crates.io"),
    "gem": ("rubygems.org", "index.rubygems.org"),
    "go": ("proxy.golang.org", "sum.golang.org"),
    "npm": ("registry.npmjs.org", "registry.yarnpkg.com"),
    "pip": ("pypi.org", "files.pythonhosted.org", "pypi.python.org"),
}
"""The public package registries `allow_package_managers: true` opens under `limited` networking, by the
environment's package managers (`config.packages`). Mirrors and private registries go in `allowed_hosts`."""

HEAD_LIMIT = 64 * 1024
"""Largest request head (request line + headers) the proxy reads."""
HEAD_TIMEOUT = 30.0
CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te", "upgrade"}
)
_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62}\.)*[a-z0-9_-]{0,63}$")
_MAX_LISTED = 20


def proxy_env(port: int = FORWARDER_PORT) -> dict[str, str]:
    """The variables that send a sandbox's HTTP clients through the forwarder (and keep loopback direct)."""
    url = f"http://127.0.0.1:{port}"
    no_proxy = "localhost,127.0.0.1,::1"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        "NODE_USE_ENV_PROXY": "1",  # Node's built-in fetch (22.21+/24+) ignores HTTP(S)_PROXY without it
    }


# -- policy ------------------------------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """Lower-case, no trailing dot, no IPv6 brackets; IP literals in their canonical form."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    return host


def _pattern(entry: str) -> str | None:
    """An `allowed_hosts` entry as a pattern: `host` or `*.domain`. Tolerates a scheme, port or path."""
    entry = entry.strip()
    if "://" in entry:
        entry = urlsplit(entry).netloc
    entry = entry.split("/", 1)[0].rsplit("@", 1)[-1]
    if entry.startswith("["):  # [v6] or [v6]:port
        entry = entry[: entry.find("]") + 1] if "]" in entry else entry
    elif entry.count(":") == 1:
        entry = entry.split(":", 1)[0]
    if entry.startswith("."):  # curl/NO_PROXY style ".example.com" means the same as "*.example.com"
        entry = "*" + entry
    wildcard = entry.startswith("*.")
    host = normalize_host(entry[2:] if wildcard else entry)
    if not host or "*" in host:
        return None
    return f"*.{host}" if wildcard else host


def host_matches(host: str, pattern: str) -> bool:
    """`pattern` is an exact host (or IP literal), or `*.domain`: any subdomain of domain, not domain itself."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


@dataclass(frozen=True)
class EgressPolicy:
    """What one sandbox may reach, from its environment's `config.networking`."""

    mode: str
    """`unrestricted`, `limited`, or `none` (nothing: used when the environment cannot be known)."""
    allowed_hosts: tuple[str, ...] = ()
    allow_package_managers: bool = False
    mcp_hosts: tuple[str, ...] = ()
    """Hosts of the agent's MCP servers, opened when `allow_mcp_servers` is true."""
    reason: str = ""
    """Why the mode is `none`, for the refusal message."""
    _patterns: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        patterns = [p for p in map(_pattern, self.allowed_hosts) if p]
        if self.allow_package_managers:
            patterns += [h for hosts in PACKAGE_REGISTRY_HOSTS.values() for h in hosts]
        patterns += [p for p in map(_pattern, self.mcp_hosts) if p]
        object.__setattr__(self, "_patterns", tuple(dict.fromkeys(patterns)))

    @classmethod
    def from_networking(cls, networking: Mapping[str, Any] | None, mcp_server_urls: Iterable[str] = ()) -> EgressPolicy:
        """From an environment's `config.networking` object; an unknown shape is treated as no network."""
        networking = networking or {}
        kind = networking.get("type")
        if kind == "unrestricted":
            return cls("unrestricted")
        if kind == "limited":
            mcp = ()
            if networking.get("allow_mcp_servers"):
                mcp = tuple(h for h in (urlsplit(u).hostname for u in mcp_server_urls) if h)
            return cls(
                "limited",
                allowed_hosts=tuple(str(h) for h in networking.get("allowed_hosts") or ()),
                allow_package_managers=bool(networking.get("allow_package_managers")),
                mcp_hosts=mcp,
            )
        reason = str(networking.get("reason") or f"unknown networking type {kind!r}")
        return cls("none", reason=reason)

    def refusal(self, host: str) -> str | None:
        """Why the policy refuses `host` (already normalized), or None when it may be reached."""
        if self.mode == "unrestricted":
            return None
        if self.mode == "none":
            return f"this sandbox has no network access: {self.reason}"
        if any(host_matches(host, p) for p in self._patterns):
            return None
        listed = [p for p in map(_pattern, self.allowed_hosts) if p]
        shown = ", ".join(listed[:_MAX_LISTED]) + (", ..." if len(listed) > _MAX_LISTED else "")
        why = f'the environment\'s networking is "limited" and {host} is not in its allowed_hosts ({shown or "none"})'
        if not self.allow_package_managers:
            why += "; package registries are not opened either (allow_package_managers is false)"
        return why + ". To reach it, add the host to the environment's config.networking.allowed_hosts"


# -- the proxy -----------------------------------------------------------------------------------------


class Refused(Exception):
    """A request the proxy answers with an error response instead of connecting."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail

    def response(self) -> bytes:
        body = f"corral egress proxy: {self.detail}\n".encode()
        head = (
            f"HTTP/1.1 {self.status} {_phrase(self.reason)}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "X-Corral-Egress: refused\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("latin-1", "replace") + body


def _phrase(text: str) -> str:
    """A reason phrase: one line of printable ASCII (clients such as Python's http.client show it)."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return text[:300]


@dataclass
class _Request:
    method: str
    host: str
    port: int
    head: bytes = b""
    """For plain HTTP: the head to send upstream (origin-form, hop-by-hop headers dropped)."""


def _parse_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[1:end], authority[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    else:
        host, port_text = authority, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise Refused(400, "Bad Request", f"bad port in {authority!r}")
        port = int(port_text)
    elif default_port is None:
        raise Refused(400, "Bad Request", f"CONNECT needs host:port, got {authority!r}")
    else:
        port = default_port
    host = normalize_host(host)
    is_ip = False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        is_ip = True
    if not host or (not is_ip and (len(host) > 253 or not _HOSTNAME.match(host))):
        raise Refused(400, "Bad Request", f"not a valid host name: {authority!r}")
    return host, port


def parse_head(head: bytes) -> _Request:
    """A proxy request head: CONNECT, or an absolute http:// URI (rewritten to origin-form)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "Bad Request", f"not an HTTP/1.x proxy request: {lines[0][:200]!r}")
    method, target, version = parts
    if method.upper() == "CONNECT":
        host, port = _parse_authority(target, None)
        return _Request("CONNECT", host, port)
    if not target.lower().startswith("http://"):
        hint = " (HTTPS goes through CONNECT)" if target.lower().startswith("https://") else ""
        raise Refused(400, "Bad Request", f"expected an absolute http:// URI or CONNECT, got {target[:200]!r}{hint}")
    url = urlsplit(target)
    authority = url.netloc.rsplit("@", 1)[-1]  # never forward userinfo
    host, port = _parse_authority(authority, 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = []
    drop = set(HOP_BY_HOP) | {"host"}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise Refused(400, "Bad Request", f"malformed header line {line[:200]!r}")
        if name.strip().lower() == "connection":
            drop.update(token.strip().lower() for token in value.split(","))
        headers.append((name.strip(), value.strip()))
    out = [f"{method} {path} {version}", f"Host: {authority}"]
    out += [f"{name}: {value}" for name, value in headers if name.lower() not in drop]
    out += ["Connection: close", "", ""]
    return _Request(method, host, port, "\r\n".join(out).encode("latin-1"))


class EgressListener:
    """One sandbox's socket on the proxy; `close()` when the sandbox goes away."""

    def __init__(
        self,
        proxy: EgressProxy,
        session_id: str,
        policy: EgressPolicy,
        path: str,
        broker: CredentialBroker | None = None,
    ) -> None:
        self.proxy = proxy
        self.session_id = session_id
        self.policy = policy
        self.path = path
        self.broker = broker
        """The session's credentials (None: nothing to add, every tunnel stays opaque)."""
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.connections):
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.proxy._listeners.discard(self)


class EgressProxy:
    """The per-process egress proxy: `open()` one listener per sandbox; nothing runs until the first."""

    def __init__(
        self,
        *,
        allowed_networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        connect_timeout: float = 10.0,
        max_connections: int = 256,
        runtime_dir: str | None = None,
        ca: CertificateAuthority | None = None,
        upstream_ca_file: str | None = None,
    ) -> None:
        """`ca`: the installation's CA, needed to intercept connections that carry credentials (None: no
        interception, so no credentials); `upstream_ca_file`: PEM certificates trusted for upstream servers
        besides the system store."""
        self.ca = ca
        self.upstream_ca_file = upstream_ca_file
        self._upstream_context: ssl.SSLContext | None = None
        self.allowed_networks = [ipaddress.ip_network(n) for n in allowed_networks]
        """Non-global networks the proxy may connect to anyway (loopback, private, ... are refused otherwise)."""
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        """Concurrent connections per sandbox; more get a 429."""
        self._base_dir = runtime_dir
        self._dir: str | None = None
        self._listeners: set[EgressListener] = set()

    def _runtime_dir(self) -> str:
        """A private directory for the sockets, made on first use: 0711, so sandbox uids can reach (only)
        their own socket, whose name they cannot list."""
        if self._dir is None:
            base = self._base_dir or tempfile.gettempdir()
            if os.geteuid() == 0 and not _searchable_by_others(base):
                base = "/tmp"  # sandboxes run as their own uids and must reach their socket by path
            _sweep_stale(base)
            self._dir = tempfile.mkdtemp(prefix=f"corral-egress-{os.getpid()}-", dir=base)
            os.chmod(self._dir, 0o711)
        return self._dir

    async def open(
        self,
        session_id: str,
        policy: EgressPolicy,
        *,
        uid: int | None = None,
        broker: CredentialBroker | None = None,
    ) -> EgressListener:
        """A new socket for one sandbox, owned by `uid` (the sandbox's host uid, when it has its own)."""
        path = os.path.join(self._runtime_dir(), os.urandom(8).hex() + ".sock")
        listener = EgressListener(self, session_id, policy, path, broker)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            if uid is not None:
                os.chown(path, uid, uid)
            os.chmod(path, 0o600)
            listener.server = await asyncio.get_running_loop().create_unix_server(
                lambda: _protocol(self, listener), sock=sock, backlog=128
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        self._listeners.add(listener)
        return listener

    async def aclose(self) -> None:
        for listener in list(self._listeners):
            await listener.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def address_refusal(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """Why the proxy never connects to `address` (a non-global one), or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global and not address.is_multicast:
            return None
        if any(address in net for net in self.allowed_networks):
            return None
        kind = (
            "loopback"
            if address.is_loopback
            else "link-local"
            if address.is_link_local
            else "private"
            if address.is_private
            else "non-public"
        )
        return f"{address} is a {kind} address"

    # -- one connection ----------------------------------------------------------------------------------
    async def handle(
        self, listener: EgressListener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        listener.connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            listener.tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            if len(listener.connections) > self.max_connections:
                raise Refused(
                    429, "Too Many Connections", f"more than {self.max_connections} open connections from this sandbox"
                )
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                raise Refused(431, "Request Header Fields Too Large", "request head over 64 KiB") from None
            except TimeoutError:
                raise Refused(408, "Request Timeout", "no complete request head within 30 s") from None
            request = parse_head(head)
            refusal = listener.policy.refusal(request.host)
            if refusal is not None:
                log.info("egress %s: refused %s %s: %s", listener.session_id, request.method, request.host, refusal)
                raise Refused(403, f"Forbidden by corral egress policy: {request.host} not allowed", refusal)
            if request.method == "CONNECT" and await self._intercepts(listener, request):
                from corral.sandbox.intercept import intercept_connect  # only sessions with credentials need it

                await intercept_connect(self, listener, request, reader, writer)
                return
            up_reader, upstream = await self._connect(request.host, request.port)
            log.debug("egress %s: %s %s:%d", listener.session_id, request.method, request.host, request.port)
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.write(request.head)
            await _relay(reader, writer, up_reader, upstream, tunnel=request.method == "CONNECT")
        except Refused as e:
            with contextlib.suppress(Exception):
                writer.write(e.response())
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("egress %s: proxy error", listener.session_id)
        finally:
            listener.connections.discard(writer)
            if task is not None:
                listener.tasks.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _intercepts(self, listener: EgressListener, request: _Request) -> bool:
        if listener.broker is None or self.ca is None:
            return False
        try:
            creds = await listener.broker.credentials()
        except Exception as e:
            log.exception("egress %s: cannot read the session's credentials", listener.session_id)
            detail = f"the session's credentials could not be read ({e})"
            raise Refused(502, "Session credentials unavailable", detail) from None
        return creds.intercepts(request.host, request.port)

    def upstream_context(self) -> ssl.SSLContext:
        """How intercepted connections verify the real server: system trust store plus `upstream_ca_file`."""
        if self._upstream_context is None:
            context = ssl.create_default_context()
            if self.upstream_ca_file:
                context.load_verify_locations(cafile=self.upstream_ca_file)
            context.set_alpn_protocols(["http/1.1"])
            self._upstream_context = context
        return self._upstream_context

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve `host`, drop the addresses the proxy never connects to, connect to the first that answers."""
        try:
            candidates = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.wait_for(
                    asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), self.connect_timeout
                )
            except (OSError, TimeoutError) as e:
                raise Refused(502, f"Cannot resolve {host}", f"could not resolve {host}: {e}") from None
            candidates = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        allowed = [a for a in candidates if self.address_refusal(a) is None]
        if not allowed:
            why = "; ".join(str(self.address_refusal(a)) for a in candidates)
            raise Refused(
                403,
                f"Forbidden by corral egress policy: {host} is not a public address",
                f"refused {host}:{port}: {why}. The proxy runs on the corral host and never connects to its "
                "loopback, private or link-local addresses",
            )
        errors = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        for address in allowed:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(str(address), port, limit=CHUNK), max(0.1, deadline - loop.time())
                )
            except TimeoutError:
                errors.append(f"{address}: timed out")
                break
            except OSError as e:
                errors.append(f"{address}: {e.strerror or e}")
        status, reason = (504, "Gateway Timeout") if errors[-1].endswith("timed out") else (502, "Bad Gateway")
        detail = f"cannot connect to {host}:{port} ({'; '.join(errors)})"
        raise Refused(status, f"{reason}: cannot connect to {host}:{port}", detail)


def _sweep_stale(base: str) -> None:
    """Remove the socket directories of our dead processes (a worker killed with SIGKILL leaves one)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            parts = entry.name.split("-")
            if len(parts) < 4 or parts[:2] != ["corral", "egress"] or not parts[2].isdigit():
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != os.geteuid() or not entry.is_dir(follow_symlinks=False):
                    continue
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue


def _searchable_by_others(path: str) -> bool:
    real = os.path.realpath(path)
    parts = [real, *(str(p) for p in Path(real).parents)]
    return all(os.stat(p).st_mode & 0o001 for p in parts)


def _protocol(proxy: EgressProxy, listener: EgressListener) -> asyncio.StreamReaderProtocol:
    reader = asyncio.StreamReader(limit=HEAD_LIMIT)
    return asyncio.StreamReaderProtocol(reader, lambda r, w: proxy.handle(listener, r, w))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def _relay(
    c_reader: asyncio.StreamReader,
    c_writer: asyncio.StreamWriter,
    u_reader: asyncio.StreamReader,
    u_writer: asyncio.StreamWriter,
    *,
    tunnel: bool,
) -> None:
    """Copy both ways until both sides are done (a tunnel) or the upstream response has ended (plain HTTP)."""
    up = asyncio.create_task(_pump(c_reader, u_writer))
    down = asyncio.create_task(_pump(u_reader, c_writer))
    try:
        pending: set[asyncio.Task[None]] = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() for t in done) or (not tunnel and down in done):
                break
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
