"""A small local web site for the web tools: pages, a redirect, binary data, and a SearXNG-style
`/search?format=json` endpoint standing in for the search provider (tests have no network)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PAGE = b"""<html><head><title>Corral notes</title><script>var secret = 1;</script></head>
<body><h1>Field notes</h1><p>The <b>herd</b> is <a href="/other">counted</a> at dawn.</p></body></html>"""


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return None

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/page":
            self._send(200, PAGE, "text/html; charset=utf-8")
        elif parts.path == "/go":
            self._send(302, b"", "text/plain", location="/page")
        elif parts.path == "/loop":
            self._send(302, b"", "text/plain", location="/loop")
        elif parts.path == "/big":
            self._send(200, b"x" * 600_000, "text/plain")
        elif parts.path == "/binary":
            self._send(200, bytes(range(256)), "application/octet-stream")
        elif parts.path == "/search":
            query = parse_qs(parts.query).get("q", [""])[0]
            results = [
                {"title": f"About {query}", "url": "https://docs.example.org/herd", "content": "Counting herds."},
                {"title": "Elsewhere", "url": "https://blocked.example.net/x", "content": "Not this one."},
            ]
            self._send(200, json.dumps({"query": query, "results": results}).encode(), "application/json")
        else:
            self._send(404, b"not here", "text/plain")


class WebSite:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
