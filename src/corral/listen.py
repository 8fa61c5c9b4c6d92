"""Listening sockets for uvicorn that answer small requests without Nagle's 40 ms stall."""

from __future__ import annotations

import socket

__all__ = ["listen_socket"]


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for `uvicorn.Server.serve(sockets=[...])`.

    asyncio turns on TCP_NODELAY for accepted connections only when the listening socket was made
    with `proto=IPPROTO_TCP`; with the default proto 0 every small SSE frame or JSON reply can wait
    for the peer's delayed ACK (~40 ms on Linux).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
