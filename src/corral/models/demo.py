"""`corral-demo`: a built-in, offline stand-in for a model, so a newcomer can watch a session run.

THIS IS NOT A LANGUAGE MODEL. It needs no key and no network, and follows a fixed script that is just
rich enough to exercise the whole agent loop (streamed text, a tool call run in the session's sandbox,
a tool result read back, usage, stop reasons):

1. The latest user turn holds a tool result → it answers with a short text quoting the first lines
   of that result (`end_turn`).
2. Otherwise, if the `bash` tool is offered (the agent has the agent toolset and the sandbox can run
   here) → a short text, then a `bash` call with a harmless command built from the user's message:
   `echo 'You said: …'; pwd; ls -la; uname -a` (`tool_use`).
3. Otherwise → a friendly text saying it is the offline demo model and how to configure a real one
   (`end_turn`).

Token counts are approximations (about four characters per token). `ModelRouter` sends every model
id starting with `corral-demo` here (`corral demo` and `examples/demo-agent.yaml` use `corral-demo`).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
from collections.abc import AsyncIterator
from typing import Any

from corral.models.base import BlockStart, ModelRequest, ModelResponse, StreamItem, TextDelta, Usage

__all__ = ["DEMO_PREFIX", "DemoModel", "is_demo_model"]

DEMO_PREFIX = "corral-demo"

HOW_TO_CONFIGURE = (
    "To use a real model, start the server with ANTHROPIC_API_KEY set and give your agent a Claude model "
    "such as claude-sonnet-4-6, or set CORRAL_OPENAI_BASE_URL to an OpenAI-compatible server (Ollama, vLLM, "
    "LiteLLM...) and use model ids starting with openai/ (for example openai/qwen3:8b)."
)
_RESULT_LINES = 6
_LINE_CHARS = 160


def is_demo_model(model: str) -> bool:
    return model.startswith(DEMO_PREFIX)


class DemoModel:
    """A `ModelClient` following the script in the module docstring. Stateless, so safe to share.

    `delay` is the pause between streamed words, so the text visibly streams (0 for none).
    """

    def __init__(self, *, delay: float = 0.015) -> None:
        self.delay = delay

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamItem]:
        text, tool_use = _plan(request)
        content: list[dict[str, Any]] = []
        if text:
            yield BlockStart(index=0, kind="text")
            for i, word in enumerate(re.findall(r"\S+\s*|\s+", text)):
                if i and self.delay:
                    await asyncio.sleep(self.delay)
                yield TextDelta(index=0, text=word)
            content.append({"type": "text", "text": text})
        if tool_use is not None:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield BlockStart(index=len(content), kind="tool_use")
            content.append(tool_use)
        usage = Usage(
            input_tokens=_tokens(json.dumps([request.system, request.messages, request.tools], default=str)),
            output_tokens=_tokens(json.dumps(content)),
        )
        yield ModelResponse(
            content=content,
            stop_reason="tool_use" if tool_use is not None else "end_turn",
            usage=usage,
            model=request.model,
        )

    async def aclose(self) -> None:
        return None


def _plan(request: ModelRequest) -> tuple[str, dict[str, Any] | None]:
    """What to say, and which tool call to make (if any), given the conversation so far."""
    last = request.messages[-1] if request.messages else {"role": "user", "content": []}
    blocks = _blocks(last.get("content")) if last.get("role") == "user" else []
    results = [b for b in blocks if b.get("type") == "tool_result"]
    if results:
        return _summarize(results[-1]), None
    said = _latest_user_text(request.messages)
    offered = {tool.get("name") for tool in request.tools}
    if "bash" in offered:
        snippet = " ".join(said.split())[:80] or "hello"
        command = f"echo {shlex.quote('You said: ' + snippet)}; pwd; ls -la; uname -a"
        text = (
            "Hi! I'm corral-demo, corral's offline demo model (a script, not a language model). "
            "To show a tool call, I'll run a harmless command in this session's sandbox."
        )
        tool_use = {
            "type": "tool_use",
            "id": f"toolu_demo_{secrets.token_hex(10)}",
            "name": "bash",
            "input": {"command": command},
        }
        return text, tool_use
    quoted = f' You said: "{_clip(" ".join(said.split()), 200)}".' if said.strip() else ""
    return (
        "Hello! I'm corral-demo, corral's built-in offline demo model: a script that needs no key and no "
        f"network, not a language model.{quoted} This agent has no bash tool to show a tool call with "
        "(give it the agent toolset, and check that `corral serve` says tools can run here). " + HOW_TO_CONFIGURE
    ), None


def _summarize(result: dict[str, Any]) -> str:
    texts = [b.get("text", "") for b in _blocks(result.get("content")) if b.get("type") == "text"]
    lines = "\n".join(texts).strip().splitlines() or ["(no output)"]
    shown = [_clip(line, _LINE_CHARS) for line in lines[:_RESULT_LINES]]
    hidden = len(lines) - len(shown)
    more = f"\n(and {hidden} more line{'s' if hidden > 1 else ''})" if hidden else ""
    outcome = "failed" if result.get("is_error") else "ran"
    body = "\n".join(shown)
    return (
        f"The command {outcome} in the session's sandbox. Its output begins:\n\n```\n{body}\n```{more}\n\n"
        "That was the whole agent loop: a message, a tool call, its result and this answer, each an event "
        "in the session's log. I'm only the offline demo model; for a real one set ANTHROPIC_API_KEY "
        "(Claude models) or CORRAL_OPENAI_BASE_URL (openai/... model ids) on the server."
    )


def _latest_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        texts = [b.get("text", "") for b in _blocks(message.get("content")) if b.get("type") == "text"]
        if texts:
            return "\n".join(texts)
    return ""


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)
