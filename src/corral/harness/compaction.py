"""Context compaction: when a conversation nears the model's window, summarize what came before.

Strategy: when the input tokens of the latest model call exceed `compact_at_tokens`, the harness
asks the same model for a summary of the conversation so far (a plain call with no tools), records
it, and emits `agent.thread_context_compacted`. From then on the context is the summary as a user
turn, followed by the last assistant message and what came after it, so pending tool results still
match their tool calls. The summary call has its own span and counts toward usage. After
`max_compactions` in one session, a turn that needs another one stops with
`compaction_limit_reached_error`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..ids import new_id
from ..models.base import ModelClient, ModelRequest, ModelResponse, Usage
from ..schemas.events import AgentThreadContextCompacted
from ..schemas.sessions import Session
from .context import Conversation

__all__ = ["Compactor"]

INSTRUCTION = (
    "The conversation above is about to be replaced by a summary to save space. Write that summary: "
    "the user's goals and constraints, what has been done (files, commands, results), decisions made, "
    "and what remains to do. Be complete but concise; write it for yourself to continue from."
)
PREFIX = "Summary of the conversation so far (earlier messages were compacted):\n\n"


class Compactor:
    def __init__(self, model: ModelClient, settings: Settings) -> None:
        self.model = model
        self.settings = settings

    def due(self, convo: Conversation) -> bool:
        usage = convo.last_usage or {}
        used = usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0) + usage.get("output_tokens", 0)
        return used >= self.settings.compact_at_tokens

    async def summarize(self, session: Session, convo: Conversation) -> tuple[str, Usage | None]:
        messages = _strip_tool_blocks(convo.context())
        if messages and messages[-1]["role"] == "user":
            messages[-1] = {
                "role": "user",
                "content": [*messages[-1]["content"], {"type": "text", "text": INSTRUCTION}],
            }
        else:
            messages.append({"role": "user", "content": [{"type": "text", "text": INSTRUCTION}]})
        request = ModelRequest(model=session.agent.model.id, system=session.agent.system, messages=messages,
                               max_tokens=self.settings.max_output_tokens)  # fmt: skip
        response: ModelResponse | None = None
        async for item in self.model.stream(request):
            if isinstance(item, ModelResponse):
                response = item
        text = "".join(b.get("text", "") for b in (response.content if response else []) if b["type"] == "text")
        return PREFIX + (text.strip() or "(the model returned no summary)"), response.usage if response else None

    @staticmethod
    def event() -> AgentThreadContextCompacted:
        return AgentThreadContextCompacted(id=new_id("event"), processed_at=datetime.now(UTC))


def _strip_tool_blocks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls rendered as text, so the summary call needs no tool definitions."""
    out: list[dict[str, Any]] = []
    for message in messages:
        blocks = []
        for block in message["content"]:
            if block["type"] == "tool_use":
                blocks.append({"type": "text", "text": f"[called tool {block['name']} with {block.get('input')}]"})
            elif block["type"] == "tool_result":
                texts = [c.get("text", "") for c in block.get("content", []) if c.get("type") == "text"]
                blocks.append({"type": "text", "text": "[tool result] " + "\n".join(texts)[:4000]})
            elif block["type"] in ("thinking", "redacted_thinking"):
                continue
            else:
                blocks.append(block)
        if blocks:
            if out and out[-1]["role"] == message["role"]:
                out[-1] = {"role": message["role"], "content": [*out[-1]["content"], *blocks]}
            else:
                out.append({"role": message["role"], "content": blocks})
    return out
