"""`web_fetch` and `web_search`: the two agent-toolset tools corral runs itself, outside any sandbox.

They run in the worker, so they must not become a way around the sandbox: a fetch resolves the host
first and refuses loopback, private, link-local and other non-public addresses (the worker's own
services, cloud metadata endpoints), re-checking every redirect. The agent's per-tool config applies:
`allowed_domains` / `blocked_domains` (a domain covers its subdomains) and `max_content_tokens`.

Search needs a provider. Corral speaks the JSON API of SearXNG, the self-hostable metasearch engine
(`CORRAL_SEARXNG_URL`); without one configured, `web_search` returns an error result saying how to set
it up. Other providers implement `SearchProvider`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx
from bs4 import BeautifulSoup
from markdownify import MarkdownConverter

from ..sandbox.base import ToolResult
from ..schemas.sessions import Session
from ..schemas.tools import AgentToolset, WebFetchToolConfig, WebSearchToolConfig
from .toolset import TOOLS, validate_input

__all__ = ["SearchProvider", "SearxngSearch", "WebTools"]

MAX_BYTES = 5 * 1024 * 1024
"""Largest response body read (the rest is dropped)."""
MAX_REDIRECTS = 5
DEFAULT_MAX_CHARS = 100_000
"""Text returned when the agent's config sets no `max_content_tokens` (~25k tokens)."""
CHARS_PER_TOKEN = 4
USER_AGENT = "corral-web-fetch/1 (+https://github.com/corral)"


class SearchProvider(Protocol):
    async def search(self, query: str, *, limit: int) -> list[dict[str, str]]:
        """Results as dicts with `title`, `url` and `snippet`."""
        ...


@dataclass
class SearxngSearch:
    """A SearXNG instance's JSON API (`/search?q=...&format=json`; enable the json format there)."""

    base_url: str
    client: httpx.AsyncClient

    async def search(self, query: str, *, limit: int) -> list[dict[str, str]]:
        response = await self.client.get(
            urljoin(self.base_url.rstrip("/") + "/", "search"), params={"q": query, "format": "json"}
        )
        response.raise_for_status()
        results = response.json().get("results") or []
        return [
            {"title": str(r.get("title", "")), "url": str(r.get("url", "")), "snippet": str(r.get("content", ""))}
            for r in results[:limit]
        ]


class FetchRefused(Exception):
    """The URL may not be fetched; the message says why, for the model."""


class WebTools:
    """The `ToolRunner` for `web_fetch` and `web_search` (see harness/tools.py)."""

    def __init__(
        self,
        *,
        search: SearchProvider | None = None,
        allowed_networks: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.search = search
        self.allowed_networks = [ipaddress.ip_network(n) for n in allowed_networks]
        """Networks fetches may reach even though they are not public (tests, intranets)."""
        self.client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, headers={"user-agent": USER_AGENT}, trust_env=False
        )
        self.definitions: dict[str, dict[str, Any]] = {
            name: TOOLS[name].tool_definition() for name in ("web_fetch", "web_search")
        }

    @classmethod
    def from_settings(cls, settings: Any) -> WebTools:
        tools = cls(allowed_networks=settings.web_fetch_allowed_networks or ())
        if settings.searxng_url:
            tools.search = SearxngSearch(settings.searxng_url, tools.client)
        return tools

    async def run(self, session: Session, name: str, tool_input: dict[str, Any]) -> ToolResult:
        problem = validate_input(name, tool_input)
        if problem:
            return ToolResult.text(problem, is_error=True)
        config = _config(session, name)
        if name == "web_fetch":
            return await self._fetch(tool_input["url"], config)
        if name == "web_search":
            return await self._search(tool_input["query"], config)
        return ToolResult.text(f"The {name} tool is not a web tool.", is_error=True)

    async def interrupt(self, session_id: str) -> None:
        return None  # the harness cancels the call itself

    async def release(self, session_id: str) -> None:
        return None

    async def forget(self, session_id: str) -> None:
        return None

    async def aclose(self) -> None:
        await self.client.aclose()

    # ---- web_fetch -----------------------------------------------------------------------------

    async def _fetch(self, url: str, config: WebFetchToolConfig | None) -> ToolResult:
        try:
            url, response, body = await self._get(url, config)
        except FetchRefused as e:
            return ToolResult.text(f"web_fetch: {e}", is_error=True)
        except httpx.HTTPError as e:
            return ToolResult.text(f"web_fetch: could not fetch {url}: {e.__class__.__name__}: {e}", is_error=True)
        if response.status_code >= 400:
            return ToolResult.text(f"web_fetch: {url} answered HTTP {response.status_code}", is_error=True)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if content_type in ("text/html", "application/xhtml+xml"):
            text = html_to_markdown(text)
        elif not (content_type.startswith("text/") or content_type.endswith(("json", "xml")) or not content_type):
            return ToolResult.text(f"web_fetch: {url} is {content_type}, not text", is_error=True)
        limit = (
            config.max_content_tokens * CHARS_PER_TOKEN if config and config.max_content_tokens else DEFAULT_MAX_CHARS
        )
        if len(text) > limit:
            text = text[:limit] + f"\n\n[truncated: {len(text) - limit} more characters]"
        return ToolResult.text(f"URL: {url}\n\n{text}" if text else f"URL: {url}\n\n(empty page)")

    async def _get(self, url: str, config: WebFetchToolConfig | None) -> tuple[str, httpx.Response, bytes]:
        """(final URL, response, body up to MAX_BYTES), following redirects and vetting each hop."""
        for _ in range(MAX_REDIRECTS + 1):
            address = await self._check(url, config)
            response = await self.client.send(_pinned(url, address), stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_BYTES:
                        break
                return url, response, bytes(body[:MAX_BYTES])
            finally:
                await response.aclose()
        raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")

    async def _check(self, url: str, config: WebFetchToolConfig | None) -> str:
        """The address to connect to, after the URL passed every rule (else `FetchRefused`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused(f"only http(s) URLs can be fetched, not {url!r}")
        host = parts.hostname.lower().rstrip(".")
        if config and config.allowed_domains and not _matches(host, config.allowed_domains):
            raise FetchRefused(f"{host} is not in this agent's allowed_domains")
        if config and config.blocked_domains and _matches(host, config.blocked_domains):
            raise FetchRefused(f"{host} is in this agent's blocked_domains")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise FetchRefused(f"cannot resolve {host}: {e}") from e
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global and not any(address in net for net in self.allowed_networks):
                raise FetchRefused(f"{host} resolves to {address}, a non-public address, which web_fetch may not reach")
        return str(infos[0][4][0])

    # ---- web_search ----------------------------------------------------------------------------

    async def _search(self, query: str, config: WebSearchToolConfig | None) -> ToolResult:
        if self.search is None:
            return ToolResult.text(
                "web_search is not configured on this corral server: set CORRAL_SEARXNG_URL to a SearXNG "
                "instance (with the json format enabled), or use web_fetch on a known URL.",
                is_error=True,
            )
        try:
            results = await self.search.search(query, limit=20)
        except (httpx.HTTPError, ValueError) as e:
            return ToolResult.text(f"web_search: the search provider failed: {e}", is_error=True)
        if config and config.allowed_domains:
            results = [r for r in results if _matches(_host(r["url"]), config.allowed_domains)]
        if config and config.blocked_domains:
            results = [r for r in results if not _matches(_host(r["url"]), config.blocked_domains)]
        if not results:
            return ToolResult.text(f"No results for {query!r}.")
        lines = [f"{i}. {r['title']}\n   {r['url']}\n   {r['snippet']}".rstrip() for i, r in enumerate(results[:10], 1)]
        return ToolResult.text("\n".join(lines))


def html_to_markdown(html: str) -> str:
    """The page's title and body as Markdown, without scripts, styles and other non-content."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "iframe", "svg"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    body = MarkdownConverter(heading_style="ATX").convert_soup(soup.body or soup).strip()
    return f"Title: {title}\n\n{body}" if title else body


def _pinned(url: str, address: str) -> httpx.Request:
    """A GET of `url` that connects to the vetted `address`, so a second DNS answer cannot redirect it.

    The Host header and the TLS server name (SNI and certificate check) stay the URL's host."""
    parts = httpx.URL(url)
    return httpx.Request(
        "GET",
        parts.copy_with(host=address),
        headers={"host": parts.netloc.decode(), "user-agent": USER_AGENT},
        extensions={"sni_hostname": parts.host},
    )


def _config(session: Session, name: str) -> Any:
    toolset = next((t for t in session.agent.tools if isinstance(t, AgentToolset)), None)
    if toolset is None:
        return None
    return next((c for c in toolset.configs if c.name == name), None)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _matches(host: str, domains: list[str]) -> bool:
    """A domain covers itself and its subdomains; web_search entries may carry a path, ignored here."""
    for entry in domains:
        domain = entry.lower().split("/", 1)[0].rstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False
