"""A client for the agent's MCP servers: list their tools and call them over Streamable HTTP.

It uses the official `mcp` SDK and runs in the worker process, never in a sandbox. Every list and
every call opens its own MCP session (initialize, request, close): nothing about a connection
outlives the step that needed it, so a worker that dies holds no state another worker would miss.

Credentials are not this module's business: the caller passes a `TokenSource` (vault/mcp_auth.py
builds one from the session's vaults). A 401 or 403 asks the source once for a fresh token
(`refresh=True`) and retries; if the answer is the same token, or none, it is an authentication
failure. Tokens go into the `Authorization` header only, never into results or messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import anyio
import httpx2

if TYPE_CHECKING:  # the `mcp` SDK takes seconds to import: loaded on the first MCP request
    from mcp import Client

from ..sandbox.base import ToolResult

__all__ = ["MCPClient", "MCPFailure", "MCPToolInfo", "NoTokens", "Probe", "TokenSource", "model_tool_name"]

T = TypeVar("T")
MAX_NAME = 128
MAX_BODY = 4096
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


class TokenSource(Protocol):
    """Bearer tokens for MCP servers, by server URL."""

    async def token(self, server_url: str, *, refresh: bool = False) -> str | None:
        """The token to send (None: send none). `refresh`: the server refused the last one."""
        ...


class NoTokens:
    """A `TokenSource` with no credentials: requests go out without `Authorization`."""

    async def token(self, server_url: str, *, refresh: bool = False) -> str | None:
        return None


class MCPFailure(Exception):
    """The server could not be reached (`connection`) or refused the credentials (`authentication`)."""

    def __init__(self, kind: Literal["connection", "authentication"], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class MCPToolInfo:
    name: str
    description: str | None
    input_schema: dict[str, Any]


def model_tool_name(server: str, tool: str, taken: set[str]) -> str:
    """The name the model sees for `tool` of `server`: `mcp__<server>__<tool>`, unique among `taken`.

    Characters the Messages API does not allow in tool names become `_`; a name that is too long, or
    that clashes after that substitution, is cut and ends in a short hash of the server and tool."""
    base = _UNSAFE.sub("_", f"mcp__{server}__{tool}")
    if len(base) <= MAX_NAME and base not in taken:
        return base
    digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:8]
    return f"{base[: MAX_NAME - 9]}_{digest}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@dataclass
class _Trace:
    """What one MCP session saw: HTTP statuses, the last error response, how far it got."""

    statuses: list[int] = field(default_factory=list)
    error: dict[str, Any] | None = None
    connected: bool = False
    """The initialize handshake succeeded."""

    @property
    def method(self) -> str:
        """The MCP method of a probe under way."""
        return "tools/list" if self.connected else "initialize"


@dataclass(frozen=True)
class Probe:
    """How a probe went: `ok`, `refused` (401/403) or `failed`; the failing MCP method and HTTP response."""

    outcome: Literal["ok", "refused", "failed"]
    method: str
    http_response: dict[str, Any] | None
    message: str = ""


class _TimedOut(Exception):
    """The request itself (not the connection) ran past its time."""


class _Refused(Exception):
    """The server answered 401/403."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class MCPClient:
    def __init__(self, *, timeout: float = 30.0, tool_timeout: float = 300.0) -> None:
        self.timeout = timeout
        """Connecting and listing tools."""
        self.tool_timeout = tool_timeout
        """One tool call, once connected."""

    async def list_tools(self, url: str, tokens: TokenSource) -> list[MCPToolInfo]:
        async def op(client: Client) -> list[MCPToolInfo]:
            found: list[MCPToolInfo] = []
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                for tool in page.tools:
                    schema = dict(tool.input_schema or {"type": "object"})
                    schema.setdefault("type", "object")
                    found.append(MCPToolInfo(tool.name, tool.description, schema))
                cursor = page.next_cursor
                if not cursor:
                    return found

        return await self._authorized(url, tokens, op, self.timeout)

    async def call_tool(self, url: str, tokens: TokenSource, name: str, arguments: dict[str, Any]) -> ToolResult:
        async def op(client: Client) -> ToolResult:
            from mcp.shared.exceptions import MCPError

            try:
                result = await client.call_tool(name, arguments)
            except MCPError as exc:  # a JSON-RPC error (unknown tool, bad arguments): the model should see it
                if exc.code == -32603 and exc.message == "Server returned an error response":
                    raise  # an HTTP error status, classified by `_session`
                return ToolResult.text(f"The MCP server answered with an error: {exc.message}", is_error=True)
            return ToolResult(content=_content(result), is_error=bool(result.is_error))

        return await self._authorized(url, tokens, op, self.tool_timeout)

    async def probe(self, url: str, token: str | None) -> Probe:
        """Connect and list tools with `token`, once, and say how it went."""
        trace = _Trace()
        try:
            await self._session(url, token, lambda c: c.list_tools(), self.timeout, trace)
        except _Refused:
            return Probe("refused", trace.method, trace.error)
        except MCPFailure as exc:
            return Probe("failed", trace.method, trace.error, exc.message)
        return Probe("ok", trace.method, None)

    async def _authorized(
        self, url: str, tokens: TokenSource, op: Callable[[Client], Awaitable[T]], timeout: float
    ) -> T:
        token = await tokens.token(url)
        try:
            return await self._session(url, token, op, timeout, _Trace())
        except _Refused:
            fresh = await tokens.token(url, refresh=True)
            if fresh is None or fresh == token:
                raise MCPFailure("authentication", _refused_message(token)) from None
        try:
            return await self._session(url, fresh, op, timeout, _Trace())
        except _Refused as exc:
            raise MCPFailure(
                "authentication", f"the MCP server refused the refreshed credentials (HTTP {exc.status})"
            ) from None

    async def _session(
        self,
        url: str,
        token: str | None,
        op: Callable[[Client], Awaitable[T]],
        timeout: float,
        trace: _Trace,
    ) -> T:
        statuses = trace.statuses

        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def seen(response: httpx2.Response) -> None:
            statuses.append(response.status_code)
            if response.status_code >= 400:
                body = (await response.aread()).decode("utf-8", "replace")
                trace.error = {
                    "status_code": response.status_code,
                    "content_type": response.headers.get("content-type", ""),
                    "body": body[:MAX_BODY],
                    "body_truncated": len(body) > MAX_BODY,
                }

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(self.timeout, read=max(self.timeout, timeout)),
            event_hooks={"response": [seen]},
        )

        async def timed(client: Client) -> T:
            trace.connected = True
            try:
                with anyio.fail_after(timeout):
                    return await op(client)
            except TimeoutError:
                raise _TimedOut() from None

        try:
            with anyio.fail_after(self.timeout + timeout):
                async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                    return await timed(client)
        except TimeoutError:
            raise MCPFailure("connection", f"the MCP server did not answer within {self.timeout:g} seconds") from None
        except BaseException as exc:
            if not isinstance(exc, Exception) or isinstance(exc, MCPFailure):
                raise
            if any(isinstance(e, _TimedOut) for e in _leaves(exc)):
                raise MCPFailure("connection", f"the MCP server did not answer within {timeout:g} seconds") from None
            refused = [s for s in statuses if s in (401, 403)]
            if refused:
                raise _Refused(refused[-1]) from None
            raise MCPFailure("connection", _describe(exc, statuses)) from None


def _refused_message(token: str | None) -> str:
    if token is None:
        return "the MCP server requires credentials, and the session's vaults hold none for its URL"
    return "the MCP server refused the credentials from the session's vaults"


def _describe(exc: BaseException, statuses: list[int]) -> str:
    from mcp.shared.exceptions import MCPError

    errors = [e for e in _leaves(exc) if not isinstance(e, anyio.get_cancelled_exc_class())] or [exc]
    first = errors[0]
    failed = [s for s in statuses if s >= 400]
    if failed:
        return f"the MCP server answered HTTP {failed[-1]}"
    if isinstance(first, httpx2.TimeoutException | TimeoutError):
        return "the MCP server did not answer in time"
    if isinstance(first, httpx2.ConnectError | OSError):
        return f"could not connect to the MCP server ({first})"
    if isinstance(first, MCPError):
        return f"the MCP server failed the request: {first.message}"
    return f"the MCP connection failed ({type(first).__name__}: {first})"


def _content(result: Any) -> list[dict[str, Any]]:
    """MCP content as Managed Agents result blocks (text and images; anything else as text)."""
    blocks: list[dict[str, Any]] = []
    for item in result.content or []:
        kind = getattr(item, "type", None)
        if kind == "text":
            blocks.append({"type": "text", "text": item.text})
        elif kind == "image" and item.mime_type in _IMAGE_TYPES and _is_base64(item.data):
            blocks.append(
                {"type": "image", "source": {"type": "base64", "media_type": item.mime_type, "data": item.data}}
            )
        elif kind == "resource":
            resource = item.resource
            text = getattr(resource, "text", None)
            blocks.append({"type": "text", "text": text if text is not None else f"[resource {resource.uri}]"})
        elif kind == "resource_link":
            blocks.append({"type": "text", "text": f"[resource {item.uri}]"})
        else:
            blocks.append({"type": "text", "text": f"[{kind} content omitted]"})
    if not blocks and getattr(result, "structured_content", None) is not None:
        blocks.append({"type": "text", "text": json.dumps(result.structured_content)})
    return blocks


def _is_base64(data: str) -> bool:
    try:
        base64.b64decode(data, validate=True)
    except ValueError:
        return False
    return True
