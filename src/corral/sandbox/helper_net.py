"""The in-sandbox egress forwarder: TCP on 127.0.0.1:3128 -> the host's egress proxy (a Unix socket).

The sandbox has no network but its own loopback; HTTP(S)_PROXY points at 127.0.0.1:3128, and the proxy
outside (corral's `sandbox/egress.py`) applies the environment's policy. `helper.py` binds the listening
socket at start (so it exists before any command runs) and loads this file in its forwarder thread only
when the first connection arrives: a sandbox that never uses the network never pays for compiling it.

Stdlib-only, for the image's own Python (3.8+), like helper.py.
"""

from __future__ import annotations

import contextlib
import select
import time


class Forwarder:
    """Relays the TCP connections accepted on `listener` to the Unix socket at `path`, from one thread
    that polls every connection (no thread per connection). Built on `_socket`, not `socket`."""

    LIMIT = 256 * 1024  # bytes buffered per direction before we stop reading the sender

    def __init__(self, listener, path: str) -> None:
        import _socket

        self.S = _socket
        self.path = path
        self.listener = listener
        self.listener.setblocking(False)
        self.poller = select.poll()
        self.poller.register(self.listener.fileno(), select.POLLIN)
        self.ends: dict = {}  # fd -> End

    def run(self) -> None:
        lfd = self.listener.fileno()
        while True:
            for fd, ev in self.poller.poll():
                if fd == lfd:
                    self.accept()
                    continue
                end = self.ends.get(fd)
                if end is None:
                    continue
                try:
                    self.service(end, ev)
                    self.settle(end)
                except Exception:  # OSError from either socket (or a bug): drop this connection only
                    self.close(end)

    def accept(self) -> None:
        S = self.S
        while True:
            try:
                fd, _ = self.listener._accept()
            except BlockingIOError:
                return
            except OSError:  # out of fds, say: back off instead of spinning on a readable listener
                time.sleep(0.05)
                return
            client = S.socket(fileno=fd)
            upstream = S.socket(S.AF_UNIX, S.SOCK_STREAM)
            try:
                client.setsockopt(S.IPPROTO_TCP, S.TCP_NODELAY, 1)
                upstream.settimeout(5.0)
                upstream.connect(self.path)
            except OSError as e:
                body = f"corral egress proxy unreachable from the sandbox: {e}\n".encode()
                with contextlib.suppress(OSError):
                    client.settimeout(1.0)
                    client.sendall(
                        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                client.close()
                upstream.close()
                continue
            client.setblocking(False)
            upstream.setblocking(False)
            a, b = End(client), End(upstream)
            a.peer, b.peer = b, a
            for end in (a, b):
                self.ends[end.fd] = end
                self.poller.register(end.fd, select.POLLIN)

    def service(self, end: End, ev: int) -> None:
        if ev & select.POLLOUT and end.out:
            self.flush(end)
        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR) and not end.eof:
            try:
                data = end.sock.recv(65536)
            except BlockingIOError:
                data = None
            if data:
                end.peer.out += data
                self.flush(end.peer)
            elif data is not None:
                end.eof = True
        if ev & select.POLLHUP and end.eof and not end.dead:
            end.dead = True  # gone both ways: nothing more can be written to it, or read from it
            end.out.clear()
            self.poller.unregister(end.fd)

    def flush(self, end: End) -> None:
        while end.out and not end.dead:
            try:
                sent = end.sock.send(end.out)
            except BlockingIOError:
                return
            del end.out[:sent]

    def settle(self, end: End) -> None:
        peer = end.peer
        for x in (end, peer):  # x said EOF and all it sent was delivered: pass the EOF on
            if x.eof and not x.peer.out and not x.peer.shut and not x.peer.dead:
                x.peer.sock.shutdown(self.S.SHUT_WR)
                x.peer.shut = True
        finished = end.eof and peer.eof and not end.out and not peer.out
        if finished or (end.dead and not peer.out) or (peer.dead and not end.out):
            self.close(end)
            return
        for x in (end, peer):
            if x.dead:
                continue
            mask = 0
            if not x.eof and not x.peer.dead and len(x.peer.out) < self.LIMIT:
                mask |= select.POLLIN
            if x.out:
                mask |= select.POLLOUT
            self.poller.modify(x.fd, mask)

    def close(self, end: End) -> None:
        for x in (end, end.peer):
            if self.ends.pop(x.fd, None) is not None:
                if not x.dead:
                    with contextlib.suppress(KeyError, OSError):
                        self.poller.unregister(x.fd)
                x.sock.close()


class End:
    """One side of a forwarded connection: its socket and the bytes waiting to be written to it."""

    __slots__ = ("dead", "eof", "fd", "out", "peer", "shut", "sock")

    def __init__(self, sock) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.out = bytearray()
        self.peer: End = self
        self.eof = False  # read EOF from it
        self.shut = False  # we shut down our writing side
        self.dead = False  # hung up both ways
