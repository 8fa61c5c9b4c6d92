"""TLS interception for connections that carry credentials: the proxy as an HTTP/1.1 man in the middle.

Used by `EgressProxy` for a `CONNECT host:port` only when the session's `EgressCredentials` have
something to apply to that host (every other tunnel stays opaque). The proxy first opens TLS to the
real server, verifying it against the system trust store (plus `CORRAL_EGRESS_UPSTREAM_CA_FILE`), so a
secret is only ever sent to a server that proved it is `host`; then it answers the CONNECT, terminates
the sandbox's TLS with a leaf certificate for `host` (`tls.py`) and relays HTTP/1.1 requests one by one
(keep-alive kept while both sides allow it), rewriting each request:

- placeholders of the credentials whose hosts match are replaced by the real values in header values
  and the request target when the credential allows `header`, in the body when it allows `body`
  (the body is then read whole, up to `MAX_REWRITTEN_BODY`, and re-framed with a new Content-Length);
  anywhere else a placeholder passes unchanged;
- header injections (repository tokens) set their header on requests under their path prefix,
  replacing whatever the sandbox sent under that name.
The credentials are asked for again for every request, so a rotated token applies to the next one.
Protocol upgrades (WebSocket) are refused with a 501 on intercepted hosts; HTTP/2 is not offered (ALPN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

import h11

from corral.sandbox.credentials import CredentialBroker, EgressCredentials
from corral.sandbox.egress import Refused

if TYPE_CHECKING:
    from corral.sandbox.egress import EgressListener, EgressProxy, _Request

__all__ = ["MAX_REWRITTEN_BODY", "intercept_connect", "relay_requests", "rewrite_head"]

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_REWRITTEN_BODY = 32 * 1024 * 1024
"""Largest request body read whole to substitute placeholders in it; larger ones get a 413."""
IDLE_TIMEOUT = 300.0
DROPPED = frozenset({b"proxy-connection", b"proxy-authorization", b"keep-alive", b"expect"})


class _Failed(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def rewrite_head(
    creds: EgressCredentials, host: str, port: int, target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The request target and headers with header-location placeholders replaced and injections set.

    Returns (target, headers, body_replacements): the (placeholder, secret) pairs still to apply to the body."""
    subs = creds.substitutions_for(host)
    in_head = [(s.placeholder.encode(), s.secret.encode()) for s in subs if s.header]
    in_body = [(s.placeholder.encode(), s.secret.encode()) for s in subs if s.body]
    for placeholder, secret in in_head:
        target = target.replace(placeholder, secret)
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name in DROPPED:
            continue
        for placeholder, secret in in_head:
            value = value.replace(placeholder, secret)
        out.append((name, value))
    path = target.decode("latin-1")
    for injection in creds.injections:
        if injection.applies_to(host, port, path):
            key = injection.name.lower().encode()
            out = [(n, v) for n, v in out if n != key]
            out.append((key, injection.value.encode("latin-1")))
    return target, out, in_body


async def intercept_connect(
    proxy: EgressProxy,
    listener: EgressListener,
    request: _Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Open verified TLS upstream, answer the CONNECT, terminate the sandbox's TLS, relay its requests
    with the session's credentials applied. A failed upstream handshake is a 502 to the CONNECT."""
    assert proxy.ca is not None and listener.broker is not None
    up_reader, upstream = await proxy._connect(request.host, request.port)
    try:
        await asyncio.wait_for(
            upstream.start_tls(proxy.upstream_context(), server_hostname=request.host), proxy.connect_timeout
        )
    except (ssl.SSLError, ssl.CertificateError, TimeoutError, OSError) as e:
        upstream.close()
        raise Refused(
            502,
            f"Bad Gateway: TLS to {request.host} failed",
            f"TLS to {request.host}:{request.port} failed ({getattr(e, 'reason', None) or e}); the proxy only "
            "sends credentials to servers whose certificate it can verify",
        ) from None
    try:
        server_context = await asyncio.to_thread(proxy.ca.server_context, request.host)
        log.debug("egress %s: CONNECT %s:%d (intercepted)", listener.session_id, request.host, request.port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await writer.start_tls(server_context)
        except (ssl.SSLError, OSError, ConnectionError):
            return  # the sandbox's client gave up (e.g. it does not trust the CA)
        await relay_requests(listener.broker, request.host, request.port, (reader, writer), (up_reader, upstream))
    finally:
        upstream.close()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float = IDLE_TIMEOUT) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await asyncio.wait_for(reader.read(CHUNK), timeout)
        conn.receive_data(data)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


async def relay_requests(
    broker: CredentialBroker,
    host: str,
    port: int,
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Serve the sandbox's requests on the (decrypted) `client` streams, forwarding each to `upstream`."""
    c_reader, c_writer = client
    u_reader, u_writer = upstream
    inbound = h11.Connection(h11.SERVER)
    outbound = h11.Connection(h11.CLIENT)
    while True:
        try:
            event = await _next(inbound, c_reader)
        except (h11.RemoteProtocolError, TimeoutError, ConnectionError, ssl.SSLError):
            return
        if not isinstance(event, h11.Request):
            return
        try:
            keep = await _one_request(
                broker, host, port, event, inbound, outbound, c_reader, c_writer, u_reader, u_writer
            )
        except (h11.RemoteProtocolError, TimeoutError, ConnectionError, ssl.SSLError):
            return  # the sandbox's client broke its request off, or a side went away mid-body
        except _Failed as e:
            if inbound.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = f"corral egress proxy: {e.detail}\n".encode()
                headers = [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-corral-egress", b"error"),
                    (b"connection", b"close"),
                ]
                with contextlib.suppress(Exception):
                    await _send(inbound, c_writer, h11.Response(status_code=e.status, headers=headers))
                    await _send(inbound, c_writer, h11.Data(data=body))
                    await _send(inbound, c_writer, h11.EndOfMessage())
            return
        if not keep:
            return
        try:
            inbound.start_next_cycle()
            outbound.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _one_request(
    broker: CredentialBroker,
    host: str,
    port: int,
    request: h11.Request,
    inbound: h11.Connection,
    outbound: h11.Connection,
    c_reader: asyncio.StreamReader,
    c_writer: asyncio.StreamWriter,
    u_reader: asyncio.StreamReader,
    u_writer: asyncio.StreamWriter,
) -> bool:
    """Forward one request and its response; True when both connections can carry another."""
    headers = [(bytes(n).lower(), bytes(v)) for n, v in request.headers]
    if any(n == b"upgrade" for n, _ in headers):
        raise _Failed(501, f"protocol upgrades are not relayed on {host}, whose traffic carries credentials")
    try:
        creds = await broker.credentials()
    except Exception as e:
        log.exception("egress: cannot read the session's credentials")
        raise _Failed(502, f"the session's credentials could not be read ({type(e).__name__})") from None
    target, headers, body_subs = rewrite_head(creds, host, port, bytes(request.target), headers)
    if inbound.they_are_waiting_for_100_continue:
        await _send(inbound, c_writer, h11.InformationalResponse(status_code=100, headers=[]))
    buffered: bytes | None = None
    has_body = any(n in (b"content-length", b"transfer-encoding") for n, _ in headers)
    if body_subs and has_body:
        buffered = await _read_body(inbound, c_reader)
        for placeholder, secret in body_subs:
            buffered = buffered.replace(placeholder, secret)
        headers = [(n, v) for n, v in headers if n not in (b"content-length", b"transfer-encoding")]
        headers.append((b"content-length", str(len(buffered)).encode()))
    try:
        await _send(outbound, u_writer, h11.Request(method=request.method, target=target, headers=headers))
        if buffered is not None:
            if buffered:
                await _send(outbound, u_writer, h11.Data(data=buffered))
        else:
            while True:
                event = await _next(inbound, c_reader)
                if isinstance(event, h11.Data):
                    await _send(outbound, u_writer, h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return False
        await _send(outbound, u_writer, h11.EndOfMessage())
    except h11.LocalProtocolError:
        # never quote h11's message: it may hold a header value, i.e. a secret just put in
        raise _Failed(400, "the request cannot be forwarded (a header or its framing is not valid HTTP)") from None
    return await _relay_response(inbound, outbound, c_writer, u_reader)


async def _read_body(inbound: h11.Connection, reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        event = await _next(inbound, reader)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_REWRITTEN_BODY:
                limit = MAX_REWRITTEN_BODY >> 20
                raise _Failed(413, f"request body over {limit} MiB cannot have placeholders replaced")
            parts.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        else:
            raise _Failed(400, "the request body ended early")


async def _relay_response(
    inbound: h11.Connection, outbound: h11.Connection, c_writer: asyncio.StreamWriter, u_reader: asyncio.StreamReader
) -> bool:
    try:
        while True:
            event = await _next(outbound, u_reader)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    await _send(inbound, c_writer, event)
                continue
            if not isinstance(event, h11.Response):
                raise _Failed(502, "the server closed the connection without a response")
            closing = outbound.their_http_version != b"1.1" or any(
                bytes(n).lower() == b"connection" and b"close" in bytes(v).lower() for n, v in event.headers
            )
            headers = [(bytes(n).lower(), bytes(v)) for n, v in event.headers if bytes(n).lower() != b"connection"]
            if closing:
                headers.append((b"connection", b"close"))
            response = h11.Response(status_code=event.status_code, headers=headers, reason=event.reason)
            await _send(inbound, c_writer, response)
            break
        while True:
            event = await _next(outbound, u_reader)
            if isinstance(event, h11.Data):
                await _send(inbound, c_writer, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await _send(inbound, c_writer, h11.EndOfMessage())
                break
            else:
                return False
    except h11.RemoteProtocolError as e:
        raise _Failed(502, f"bad response from the server: {e}") from None
    except (TimeoutError, ConnectionError, ssl.SSLError) as e:
        raise _Failed(502, f"the server connection failed: {e!r}") from None
    return inbound.our_state is h11.DONE and outbound.our_state is h11.DONE and not closing
