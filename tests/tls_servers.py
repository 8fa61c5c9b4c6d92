"""Local HTTPS servers for the egress tests: a test CA, an echo service and a git server (`git
http-backend` behind a token check), all on loopback addresses.

They listen on 127.0.0.2 and 127.0.0.3 rather than 127.0.0.1: the sandbox's NO_PROXY sends 127.0.0.1 and
localhost to its own loopback, and these servers must be reached through the egress proxy like any host.
Both addresses are the machine's loopback (127.0.0.0/8), so nothing leaves it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOSTS = ("127.0.0.2", "127.0.0.3")
"""Where the servers listen. The certificate names only the first (and localhost): to a client checking
names, the second is a server whose certificate does not match."""


class TestCA:
    """A CA and one server certificate for HOSTS[0] and localhost, written to `directory`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test upstream CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.IPAddress(ipaddress.ip_address(HOSTS[0])), x509.DNSName("localhost")]
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test server")]))
            .issuer_name(name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = directory / "test-ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(pem))
        self.chain_file = directory / "server.pem"
        self.chain_file.write_bytes(
            leaf.public_bytes(pem)
            + leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.chain_file)
        return context


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True


class _Servers:
    """One handler class served over TLS on each of HOSTS (same port number where possible)."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        self.servers: list[_TLSServer] = []
        context = ca.server_context()
        for host in HOSTS:
            server = _TLSServer((host, 0), self.handler)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            server.owner = self  # type: ignore[attr-defined]
            self.servers.append(server)
        self.ports = {host: s.server_address[1] for host, s in zip(HOSTS, self.servers, strict=True)}

    def url(self, host: str = HOSTS[0]) -> str:
        return f"https://{host}:{self.ports[host]}"

    def __enter__(self) -> Any:
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return None

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {
            "host": self.server.server_address[0],
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        owner: HttpsEcho = self.server.owner  # type: ignore[attr-defined]
        owner.seen.append(record)
        # the reply names the headers but never repeats a value: a secret the proxy put in must not come
        # back into the sandbox (the exfiltration test scans every process's memory for it)
        data = json.dumps({**record, "headers": sorted(record["headers"]), "body": len(body)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer


class HttpsEcho(_Servers):
    """Keeps a record of every request (`seen`: host, method, path, headers, body) and answers with it,
    header values and body left out."""

    handler = _EchoHandler

    def __init__(self, ca: TestCA) -> None:
        self.seen: list[dict[str, Any]] = []
        super().__init__(ca)


class _GitHandler(BaseHTTPRequestHandler):
    """`git http-backend` (smart HTTP) for repositories under the owner's root, behind Basic auth with
    the token as password; 404 for a repository that does not exist."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        return None

    def _serve(self) -> None:
        owner: GitServer = self.server.owner  # type: ignore[attr-defined]
        path, _, query = self.path.partition("?")
        owner.requests.append({"path": path, "authorization": self.headers.get("authorization")})
        expected = "Basic " + base64.b64encode(f"x-access-token:{owner.token}".encode()).decode()
        if self.headers.get("authorization") != expected:
            self.send_response(401)
            self.send_header("www-authenticate", 'Basic realm="corral test git"')
            self.send_header("content-length", "0")
            self.end_headers()
            return
        repo = path.split(".git", 1)[0].strip("/") + ".git"
        if not (owner.root / repo).is_dir():
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "agent",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(owner.root),
        }
        if self.headers.get("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["content-encoding"]
        if self.headers.get("git-protocol"):
            env["GIT_PROTOCOL"] = self.headers["git-protocol"]
        result = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False, timeout=60
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve


class GitServer(_Servers):
    """Bare repositories in a temporary root, served over HTTPS to whoever presents `token`."""

    handler = _GitHandler

    def __init__(self, ca: TestCA, token: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="corral-git-"))
        self.token = token
        self.requests: list[dict[str, Any]] = []
        super().__init__(ca)

    def make_repo(self, name: str, files: dict[str, str], branch: str = "main") -> Path:
        """A bare repository `name` (e.g. "team/app.git") with one commit holding `files`."""
        bare = self.root / name
        work = Path(tempfile.mkdtemp(prefix="corral-git-work-"))
        git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
        try:
            subprocess.run(["git", "init", "-q", "-b", branch, str(work)], check=True)
            for path, content in files.items():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(content)
            subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
            subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "initial"], check=True)
            bare.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
            subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return bare

    def log(self, bare: Path, ref: str = "HEAD") -> str:
        return subprocess.run(
            ["git", "-C", str(bare), "log", "--format=%s", ref], capture_output=True, text=True, check=True
        ).stdout

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        shutil.rmtree(self.root, ignore_errors=True)
