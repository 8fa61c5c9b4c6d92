"""The installation's egress CA: what lets the egress proxy terminate TLS from a sandbox.

Sandboxes trust this CA (its certificate is put into every sandbox's CA bundle, see `local.py`), so the
proxy can present a certificate for any host a sandbox connects to and read the requests in clear, which
it must do to put a credential's real value in place of its placeholder (`intercept.py`). The CA's key
is made on first use in the data directory (`egress-ca/ca.key`, mode 0600, the directory 0700) and never
leaves the corral process; leaf certificates are minted per host on demand (one P-256 key for all of
them, made per process) and cached.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SYSTEM_CA_BUNDLES", "CertificateAuthority"]

SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
)
"""Where the host's trust store is, first found wins: the sandbox's bundle is that plus the CA."""
CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 30
MAX_CACHED_LEAVES = 1024


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class CertificateAuthority:
    """The per-installation CA in `directory` (created, with its key, the first time it is needed)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaves: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._bundle: bytes | None = None

    # -- the CA itself ---------------------------------------------------------------------------------
    def _load(self) -> None:
        with self._lock:
            if self._cert is not None:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            key_path, cert_path = self.directory / "ca.key", self.directory / "ca.pem"
            if key_path.exists() and cert_path.exists():
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                self._key, self._cert = key, x509.load_pem_x509_certificate(cert_path.read_bytes())
                return
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"corral egress CA {os.urandom(4).hex()}"),
                ]
            )
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=CA_VALIDITY_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        key_cert_sign=True,
                        crl_sign=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            pem_key = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _private_file(key_path, pem_key)
            _private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            os.chmod(cert_path, 0o644)
            self._key, self._cert = key, cert

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate (public), as sandboxes get it."""
        self._load()
        assert self._cert is not None
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def bundle_pem(self) -> bytes:
        """The host's trust store followed by the CA: what a sandbox's default CA bundle becomes."""
        if self._bundle is None:
            system = b""
            for path in SYSTEM_CA_BUNDLES:
                with contextlib.suppress(OSError):
                    system = Path(path).read_bytes()
                    break
            if system and not system.endswith(b"\n"):
                system += b"\n"
            self._bundle = system + self.certificate_pem
        return self._bundle

    # -- leaf certificates -------------------------------------------------------------------------------
    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for `host` (a name or IP literal), cached."""
        with self._lock:
            context = self._leaves.get(host)
            if context is not None:
                self._leaves.move_to_end(host)
                return context
        context = self._mint(host)
        with self._lock:
            self._leaves[host] = context
            while len(self._leaves) > MAX_CACHED_LEAVES:
                self._leaves.popitem(last=False)
        return context

    def _mint(self, host: str) -> ssl.SSLContext:
        self._load()
        assert self._key is not None and self._cert is not None
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.certificate_pem
        key = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        # ssl loads a chain only from files: write both into the CA's private directory, load, delete.
        fd, path = tempfile.mkstemp(dir=self.directory, prefix=".leaf-", suffix=".pem")
        try:
            os.write(fd, chain + key)
            os.close(fd)
            context.load_cert_chain(path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return context
