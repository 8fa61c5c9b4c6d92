"""A local MCP server for tests: the `mcp` SDK's MCPServer over Streamable HTTP on 127.0.0.1, behind a
bearer-token check, plus an OAuth token endpoint that refreshes tokens (RFC 6749 §6).

Any path ending in `/mcp` reaches the same server (so tests can declare several servers by URL);
every request's path and `Authorization` header are recorded. Tokens are accepted while they are in
`tokens`; the token endpoint (`/token`, client `client-1` / `CLIENT_SECRET` over HTTP Basic) trades a refresh
token in `refresh_tokens` for a new access token, which it adds to `tokens`, and rotates the refresh
token.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import uvicorn
from mcp.server.mcpserver import MCPServer

from corral.listen import listen_socket

CLIENT_ID = "client-1"
CLIENT_SECRET = "client-secret-9d41c7e2"  # long enough never to turn up by chance inside a random id


@dataclass
class Seen:
    path: str
    authorization: str | None


@dataclass
class TokenRequest:
    form: dict[str, str]
    authorization: str | None


@dataclass
class MCPTestServer:
    tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    token_requests: list[TokenRequest] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        mcp = MCPServer("corral-test-tools")

        @mcp.tool()
        def add(a: int, b: int) -> str:
            """Add two integers."""
            self.calls.append(("add", {"a": a, "b": b}))
            return str(a + b)

        @mcp.tool()
        def shout(text: str) -> str:
            """Upper-case some text."""
            self.calls.append(("shout", {"text": text}))
            return text.upper()

        @mcp.tool()
        def wipe(everything: bool = True) -> str:
            """A tool an agent may disable."""
            self.calls.append(("wipe", {"everything": everything}))
            return "wiped"

        @mcp.tool()
        async def nap(seconds: float) -> str:
            """Sleep for a while."""
            self.calls.append(("nap", {"seconds": seconds}))
            await asyncio.sleep(seconds)
            return "rested"

        self.inner = mcp.streamable_http_app(stateless_http=True, json_response=True)
        self.sock = listen_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on", interface="asgi3"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}/mcp"

    def new_token(self) -> str:
        token = "tok-" + secrets.token_hex(12)
        self.tokens.add(token)
        return token

    def seen_at(self, name: str) -> list[str | None]:
        return [s.authorization for s in self.seen if s.path == f"/{name}/mcp"]

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        authorization = headers.get("authorization")
        if scope["path"] == "/token":
            await self._token(receive, send, authorization)
            return
        self.seen.append(Seen(scope["path"], authorization))
        if not scope["path"].endswith("/mcp"):
            await _send(send, 404, b"not here")
            return
        if authorization is None or authorization.removeprefix("Bearer ") not in self.tokens:
            await _send(send, 401, b'{"error":"invalid_token"}', "application/json")
            return
        await self.inner({**scope, "path": "/mcp", "raw_path": b"/mcp"}, receive, send)

    async def _token(self, receive: Any, send: Any, authorization: str | None) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.token_requests.append(TokenRequest(form, authorization))
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if authorization != expected:
            await _send(send, 401, b'{"error":"invalid_client"}', "application/json")
            return
        refresh = unquote(form.get("refresh_token", ""))
        if form.get("grant_type") != "refresh_token" or refresh not in self.refresh_tokens:
            await _send(send, 400, b'{"error":"invalid_grant"}', "application/json")
            return
        self.refresh_tokens.discard(refresh)
        access, rotated = self.new_token(), "rt-" + secrets.token_hex(8)
        self.refresh_tokens.add(rotated)
        self.issued.append(access)
        payload = f'{{"access_token":"{access}","token_type":"Bearer","expires_in":3600,"refresh_token":"{rotated}"}}'
        await _send(send, 200, payload.encode(), "application/json")

    def __enter__(self) -> MCPTestServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("MCP test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


async def _send(send: Any, status: int, body: bytes, content_type: str = "text/plain") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": body})
