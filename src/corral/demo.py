"""`corral demo`: run one session end to end against a running server and print its events.

Uses the official `anthropic` SDK like any client would. The default agent runs on `corral-demo`, the
offline demo model (models/demo.py), so a newcomer sees a whole turn -- model, tool call in the sandbox,
answer -- without a key or network.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer

__all__ = ["DEMO_AGENT", "DEMO_MESSAGE", "run_demo"]

DEMO_AGENT: dict[str, Any] = {
    "name": "corral demo",
    "description": "Shows a session end to end with the offline demo model (no API key needed).",
    "model": "corral-demo",
    "system": "You are a helpful assistant working in a sandboxed /workspace directory.",
    "tools": [{"type": "agent_toolset_20260401"}],
}
"""The agent `corral demo` uses by default; `examples/demo-agent.yaml` holds the same definition."""
DEMO_ENVIRONMENT = "corral-demo"
DEMO_MESSAGE = "Hello! What is in your workspace?"


async def run_demo(url: str, api_key: str | None, message: str, definition: dict[str, Any], timeout: float) -> int:
    import anthropic

    # An explicit key, so the SDK never falls back to ANTHROPIC_API_KEY and sends it to this server.
    client = anthropic.AsyncAnthropic(base_url=url, api_key=api_key or "no-key", max_retries=1)
    printer = _EventPrinter()
    try:
        agent = await _demo_agent(client, definition)
        env = await _demo_environment(client)
        session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id, title="corral demo")
        typer.echo(f"agent {agent.id} ({agent.name!r}, model {agent.model.id}, version {agent.version})")
        typer.echo(f"environment {env.id} ({env.name!r}); session {session.id}")
        typer.echo(f"streaming {url}/v1/sessions/{session.id}/events/stream\n")
        stream = await client.beta.sessions.events.stream(session.id, event_deltas=["agent.message"])
        async with asyncio.timeout(timeout), stream:
            user_message = {"type": "user.message", "content": [{"type": "text", "text": message}]}
            await client.beta.sessions.events.send(session.id, events=[user_message])
            async for event in stream:
                printer.show(event)
                if event.type in ("session.status_idle", "session.status_terminated"):
                    break
    except TimeoutError:
        printer.end_line()
        typer.echo(
            f"error: the session did not go idle within {timeout:g} s (does the server run workers? "
            "`corral serve -w 0` runs none)",
            err=True,
        )
        return 1
    except anthropic.APIConnectionError:
        typer.echo(f"error: cannot reach a corral server at {url}: start one with `corral serve`", err=True)
        return 1
    except anthropic.AuthenticationError:
        typer.echo("error: the server refused the API key: pass --api-key or set CORRAL_API_KEY", err=True)
        return 1
    except anthropic.APIStatusError as exc:
        typer.echo(f"error: {exc.status_code}: {getattr(exc, 'api_message', None) or exc.message}", err=True)
        return 1
    finally:
        await client.close()
    return _demo_summary(printer.last, agent.model.id)


def _demo_summary(last: Any, model: str) -> int:
    stop = getattr(getattr(last, "stop_reason", None), "type", None)
    typer.echo("")
    if last is None or last.type == "session.status_terminated":
        typer.echo("the session ended without going idle", err=True)
        return 1
    if stop == "requires_action":
        typer.echo("the session waits for a tool confirmation or a custom tool result (see docs/events.md)")
        return 0
    if stop != "end_turn":
        typer.echo(f"the turn stopped early ({stop}); see the session.error events above", err=True)
        return 1
    if model.startswith("corral-demo"):
        typer.echo(
            "That was corral-demo, the offline demo model. For a real one, restart the server with "
            "ANTHROPIC_API_KEY set and run `corral demo --model claude-sonnet-4-6` (or set "
            "CORRAL_OPENAI_BASE_URL and use `--model openai/<model>`)."
        )
    return 0


async def _demo_agent(client: Any, definition: dict[str, Any]) -> Any:
    """The agent named like the definition, updated to it (no new version if nothing changed), or a new one."""
    import inspect

    fields = dict(definition)
    async for agent in client.beta.agents.list():
        if agent.name == fields["name"] and agent.archived_at is None:
            known = inspect.signature(client.beta.agents.update).parameters
            kwargs = {k: v for k, v in fields.items() if k in known}
            extra = {k: v for k, v in fields.items() if k not in known}
            return await client.beta.agents.update(agent.id, version=agent.version, extra_body=extra or None, **kwargs)
    known = inspect.signature(client.beta.agents.create).parameters
    kwargs = {k: v for k, v in fields.items() if k in known}
    extra = {k: v for k, v in fields.items() if k not in known}
    return await client.beta.agents.create(extra_body=extra or None, **kwargs)


async def _demo_environment(client: Any) -> Any:
    async for env in client.beta.environments.list():
        if env.name == DEMO_ENVIRONMENT and getattr(env, "archived_at", None) is None:
            return env
    return await client.beta.environments.create(name=DEMO_ENVIRONMENT)


class _EventPrinter:
    """Prints each event as its type and a short human rendering; streams agent text as it arrives."""

    WIDTH = 26

    def __init__(self) -> None:
        self.last: Any = None
        self.preview_id: str | None = None
        self.preview_text = ""
        self.indent_next = False

    def show(self, event: Any) -> None:
        kind = event.type
        if kind == "event_start":
            self.end_line()
            inner = event.event
            if inner.type == "agent.message":
                self.preview_id, self.preview_text, self.indent_next = inner.id, "", False
                typer.echo(self._label(inner.type, "cyan"), nl=False)
            return
        if kind == "event_delta":
            content = getattr(event.delta, "content", None)
            if event.event_id == self.preview_id and getattr(content, "type", None) == "text":
                self.preview_text += content.text
                self._write_streamed(content.text)
            return
        if kind == "agent.message" and event.id == self.preview_id:
            previewed = self.preview_text
            self.end_line()
            if previewed == _text(event.content):  # already shown as it streamed
                self.last = event
                return
        self.end_line()
        self.last = event
        lines = _render(event).splitlines() or [""]
        color = "red" if kind == "session.error" or getattr(event, "is_error", False) is True else "cyan"
        typer.echo(self._label(kind, color) + lines[0] if lines[0] else typer.style(kind, fg=color))
        for line in lines[1:]:
            typer.echo(" " * self.WIDTH + line if line else "")

    def end_line(self) -> None:
        if self.preview_id is not None:
            typer.echo("")
            self.preview_id, self.preview_text = None, ""

    def _label(self, kind: str, color: str) -> str:
        return typer.style(kind, fg=color) + " " * max(1, self.WIDTH - len(kind))

    def _write_streamed(self, text: str) -> None:
        """Streamed text, continuation lines indented under the first (no trailing blanks)."""
        for i, piece in enumerate(text.split("\n")):
            if i:
                typer.echo("")
                self.indent_next = True
            if piece:
                typer.echo((" " * self.WIDTH if self.indent_next else "") + piece, nl=False)
                self.indent_next = False


def _text(content: Any) -> str:
    return "".join(getattr(block, "text", "") or "" for block in content or [])


def _render(event: Any) -> str:
    """A short human rendering of one session event."""
    kind = event.type
    if kind in ("user.message", "agent.message"):
        return _text(event.content)
    if kind in ("agent.tool_use", "agent.custom_tool_use"):
        tool_input = event.input or {}
        if isinstance(tool_input.get("command"), str):
            shown = f"$ {tool_input['command']}"
        else:
            shown = json.dumps(tool_input, ensure_ascii=False)
        return f"{event.name}: {shown}"
    if kind == "agent.tool_result":
        lines = _text(event.content).splitlines() or ["(no output)"]
        hidden = len(lines) - 5
        more = [f"... ({hidden} more line{'s' if hidden > 1 else ''})"] if hidden > 0 else []
        return "\n".join([("error: " if event.is_error else "") + lines[0], *lines[1:5], *more])
    if kind == "span.model_request_end":
        usage = event.model_usage
        tokens = f"{usage.input_tokens} input / {usage.output_tokens} output tokens" if usage else "no usage"
        return tokens + (" (failed)" if event.is_error else "")
    if kind == "session.status_idle":
        reason = event.stop_reason
        ids = getattr(reason, "event_ids", None)
        return f"stop_reason: {reason.type}" + (f" (waiting on {', '.join(ids)})" if ids else "")
    if kind == "session.error":
        error = event.error
        retry = getattr(getattr(error, "retry_status", None), "type", None)
        return f"{error.type}: {error.message}" + (f" ({retry})" if retry else "")
    return ""
