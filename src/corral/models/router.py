"""One `ModelClient` that picks the backend from the model id.

Agents name their model by id only (`claude-...`, `openai/qwen3-32b`), so the prefix is the routing
key: ids starting with `corral-demo` go to the built-in offline demo model (`models/demo.py`: no key,
no network); ids starting with an OpenAI prefix go, prefix stripped, to the OpenAI-compatible server;
everything else goes to Anthropic. Backends are created on first use, so a deployment pays only for
the ones it uses (importing the Anthropic SDK alone takes seconds).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from corral.models.base import ModelClient, ModelError, ModelRequest, StreamItem
from corral.models.demo import DEMO_PREFIX

if TYPE_CHECKING:
    from corral.models.anthropic import AnthropicClient
    from corral.models.demo import DemoModel
    from corral.models.openai_compat import OpenAICompatClient

__all__ = ["ModelRouter"]

_DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"


class ModelRouter:
    """Routes each request to the demo model, the Anthropic or the OpenAI-compatible client; shares them."""

    def __init__(
        self,
        *,
        anthropic_api_key: str | None = None,
        anthropic_base_url: str | None = None,
        openai_base_url: str | None = None,
        openai_api_key: str | None = None,
        openai_prefixes: tuple[str, ...] = ("openai/",),
    ) -> None:
        self.anthropic_api_key = anthropic_api_key
        self.anthropic_base_url = anthropic_base_url
        self.openai_base_url = openai_base_url
        self.openai_api_key = openai_api_key
        self.openai_prefixes = openai_prefixes
        self._anthropic: AnthropicClient | None = None
        self._openai: OpenAICompatClient | None = None
        self._demo: DemoModel | None = None

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamItem]:
        client, model = self._route(request.model)
        items = client.stream(replace(request, model=model) if model != request.model else request)
        try:
            async for item in items:
                yield item
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        clients: list[ModelClient] = [c for c in (self._anthropic, self._openai, self._demo) if c is not None]
        self._anthropic = self._openai = self._demo = None
        for client in clients:
            await client.aclose()

    @property
    def anthropic_configured(self) -> bool:
        return bool(
            self.anthropic_api_key or os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")
        )

    @property
    def configured(self) -> bool:
        """Whether any backend has what it needs to answer a request."""
        return self.anthropic_configured or bool(self.openai_base_url)

    def describe(self) -> str:
        """One line saying which backends are configured, or how to configure one."""
        prefixes = " or ".join(repr(p) for p in self.openai_prefixes)
        openai = f"OpenAI-compatible server at {self.openai_base_url} for model ids starting with {prefixes}"
        if not self.configured:
            return (
                "no model configured: set ANTHROPIC_API_KEY, or CORRAL_OPENAI_BASE_URL for an "
                f"OpenAI-compatible server (then use model ids starting with {prefixes}); meanwhile the "
                f"offline demo model '{DEMO_PREFIX}' works without either: try `corral demo`"
            )
        anthropic_url = self.anthropic_base_url or os.environ.get("ANTHROPIC_BASE_URL") or _DEFAULT_ANTHROPIC_URL
        if not self.openai_base_url:
            return (
                f"models: Anthropic API at {anthropic_url}; "
                "set CORRAL_OPENAI_BASE_URL to add an OpenAI-compatible server"
            )
        if not self.anthropic_configured:
            return f"models: {openai}; set ANTHROPIC_API_KEY to use Claude models"
        return f"models: Anthropic API at {anthropic_url}; {openai}"

    def _route(self, model: str) -> tuple[ModelClient, str]:
        if model.startswith(DEMO_PREFIX):
            return self._demo_client(), model
        for prefix in self.openai_prefixes:
            if model.startswith(prefix):
                return self._openai_client(), model.removeprefix(prefix)
        return self._anthropic_client(), model

    def _openai_client(self) -> OpenAICompatClient:
        if self._openai is None:
            if not self.openai_base_url:
                raise ModelError(
                    "invalid_request",
                    "model ids starting with "
                    + " or ".join(repr(p) for p in self.openai_prefixes)
                    + " need an OpenAI-compatible server: set CORRAL_OPENAI_BASE_URL",
                )
            from corral.models.openai_compat import OpenAICompatClient

            self._openai = OpenAICompatClient(self.openai_base_url, api_key=self.openai_api_key)
        return self._openai

    def _demo_client(self) -> DemoModel:
        if self._demo is None:
            from corral.models.demo import DemoModel

            self._demo = DemoModel()
        return self._demo

    def _anthropic_client(self) -> AnthropicClient:
        if self._anthropic is None:
            from corral.models.anthropic import AnthropicClient

            self._anthropic = AnthropicClient(api_key=self.anthropic_api_key, base_url=self.anthropic_base_url)
        return self._anthropic
