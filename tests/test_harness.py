"""The harness through the SDK, against the scripted fake model: turns, previews, retries, interrupts,
custom tools, confirmations, budgets, compaction and an OpenAI-compatible backend."""

from __future__ import annotations

import threading
import time

import anthropic

from .fake_model import FakeModel, Reply, last_user_text, tool_results
from .turns import new_session, text, turn, types, wait_for

WEATHER = {
    "type": "custom",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_a_turn_runs_end_to_end_with_usage(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents, system="Be brief.")
    fake.reply(text="Hello there!")
    seen = turn(agents, session.id, [text("hi")])
    assert types(seen) == [
        "user.message", "session.status_running", "span.model_request_start", "agent.message",
        "span.model_request_end", "session.status_idle",
    ]  # fmt: skip
    assert seen[3].content[0].text == "Hello there!"
    assert seen[-1].stop_reason.type == "end_turn"
    assert seen[4].model_request_start_id == seen[2].id and seen[4].is_error is False
    request = fake.model_requests[-1].json
    assert request["system"] == "Be brief." and request["model"] == "claude-sonnet-4-6"
    logged = list(agents.beta.sessions.events.list(session.id))
    assert logged[0].type == "user.message" and logged[0].processed_at is not None
    after = wait_for(lambda: (s := agents.beta.sessions.retrieve(session.id)).status == "idle" and s)
    usage = seen[4].model_usage
    assert after.usage.input_tokens == usage.input_tokens > 0
    assert after.usage.output_tokens == usage.output_tokens > 0


def test_conversation_carries_over_turns(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents)
    fake.reply(text="I am corral.").reply(text="You asked who I am.")
    turn(agents, session.id, [text("who are you?")])
    turn(agents, session.id, [text("what did I ask?")])
    messages = fake.model_requests[-1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][0]["text"] == "I am corral."
    assert last_user_text(fake.model_requests[-1].json) == "what did I ask?"
    spans = [e for e in agents.beta.sessions.events.list(session.id) if e.type == "span.model_request_end"]
    total = sum(s.model_usage.output_tokens for s in spans)
    assert wait_for(lambda: agents.beta.sessions.retrieve(session.id).usage.output_tokens == total)


def test_previews_stream_before_the_buffered_message(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents)
    fake.reply(text="one two three four", thinking="let me think")
    seen = turn(agents, session.id, [text("count")], deltas=["agent.message", "agent.thinking"])
    kinds = types(seen)
    assert "agent.thinking" in kinds
    start = next(e for e in seen if e.type == "event_start" and e.event.type == "agent.message")
    deltas = [e for e in seen if e.type == "event_delta"]
    message = next(e for e in seen if e.type == "agent.message")
    assert start.event.id == message.id and all(d.event_id == message.id for d in deltas)
    assert "".join(d.delta.content.text for d in deltas) == "one two three four"
    assert kinds.index("event_start") < kinds.index("agent.message") < kinds.index("span.model_request_end")
    assert [e.type for e in agents.beta.sessions.events.list(session.id) if e.type.startswith("event_")] == []


def test_a_step_is_on_the_stream_before_previews_of_the_call_it_chains(
    agents: anthropic.Anthropic, fake: FakeModel
) -> None:
    """The call after a refused tool is sent while the refusal's append commits (`append_behind`); what
    it streams is looked at only once that append has landed, so every stream shows the step's events,
    then the next span's start, then its previews, and the call saw the refusal in its context."""
    session = new_session(agents)
    for i in range(3):
        fake.reply(tool_use=[("not_a_tool_of_this_agent", {"n": i})])
    fake.reply(text="alpha beta gamma")
    seen = turn(agents, session.id, [text("go")], deltas=["agent.message"])
    kinds = types(seen)
    starts = [i for i, k in enumerate(kinds) if k == "span.model_request_start"]
    ends = [i for i, k in enumerate(kinds) if k == "span.model_request_end"]
    uses = [i for i, k in enumerate(kinds) if k == "agent.tool_use"]
    assert len(starts) == len(ends) == 4 and len(uses) == 3, kinds
    for step in range(3):
        assert starts[step] < uses[step] < ends[step] < starts[step + 1], kinds
    preview = kinds.index("event_start")
    assert starts[3] < preview < kinds.index("agent.message") < ends[3], kinds
    messages = fake.model_requests[-1].json["messages"]
    refused = [b for m in messages if m["role"] == "user" for b in m["content"] if b["type"] == "tool_result"]
    assert len(refused) == 3 and all(b["is_error"] for b in refused)
    logged = [e.type for e in agents.beta.sessions.events.list(session.id)]
    assert logged == [k for k in kinds if not k.startswith("event_")]


def test_overloaded_model_is_retried_then_succeeds(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents)
    fake.fail(529, times=2).reply(text="finally")
    seen = turn(agents, session.id, [text("hello?")])
    errors = [e for e in seen if e.type == "session.error"]
    assert [(e.error.type, e.error.retry_status.type) for e in errors] == [("model_overloaded_error", "retrying")] * 2
    assert types(seen).count("session.status_rescheduled") == 2
    assert next(e for e in seen if e.type == "agent.message").content[0].text == "finally"
    ends = [e for e in seen if e.type == "span.model_request_end"]
    assert [e.is_error for e in ends] == [True, True, False]
    assert seen[-1].stop_reason.type == "end_turn"


def test_exhausted_retries_end_the_turn_and_the_next_message_works(
    agents: anthropic.Anthropic, fake: FakeModel
) -> None:
    session = new_session(agents)
    fake.fail(429, times=3, retry_after=0)
    seen = turn(agents, session.id, [text("anyone?")])
    errors = [e.error for e in seen if e.type == "session.error"]
    assert [e.retry_status.type for e in errors] == ["retrying", "retrying", "exhausted"]
    assert errors[0].type == "model_rate_limited_error"
    assert seen[-1].stop_reason.type == "retries_exhausted"
    fake.reply(text="back")
    again = turn(agents, session.id, [text("try again")])
    assert next(e for e in again if e.type == "agent.message").content[0].text == "back"


def test_a_bad_request_is_not_retried(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents)
    fake.fail(400, times=1, message="bad things")
    seen = turn(agents, session.id, [text("x")])
    errors = [e.error for e in seen if e.type == "session.error"]
    assert [(e.type, e.retry_status.type) for e in errors] == [("model_request_failed_error", "exhausted")]
    assert "bad things" in errors[0].message


def test_interrupt_stops_a_streaming_model_call(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents)
    fake.reply(text="this goes on and on", hang=True)
    seen: list = []
    with agents.beta.sessions.events.stream(session.id) as stream:
        agents.beta.sessions.events.send(session.id, events=[text("talk forever")])
        interrupted_at = None
        for event in stream:
            seen.append(event)
            if event.type == "span.model_request_start":
                time.sleep(0.3)
                interrupted_at = time.monotonic()
                agents.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
            if event.type == "session.status_idle":
                break
    assert interrupted_at is not None and time.monotonic() - interrupted_at < 3
    end = next(e for e in seen if e.type == "span.model_request_end")
    assert end.is_error is True
    assert seen[-1].stop_reason.type == "end_turn"
    assert "agent.message" not in types(seen)
    fake.reply(text="ok, short now")
    again = turn(agents, session.id, [text("be short")])
    assert next(e for e in again if e.type == "agent.message").content[0].text == "ok, short now"


def test_custom_tool_round_trip(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents, tools=[WEATHER])
    fake.reply(tool_use=[("get_weather", {"city": "Paris"})])
    fake.respond_with(lambda body: Reply(text=f"It is {tool_results(body)[-1][1]}"))
    seen = turn(agents, session.id, [text("weather in Paris?")])
    use = next(e for e in seen if e.type == "agent.custom_tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert seen[-1].stop_reason.type == "requires_action" and seen[-1].stop_reason.event_ids == [use.id]
    assert agents.beta.sessions.retrieve(session.id).status == "idle"
    result = {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": use.id,
        "content": [{"type": "text", "text": "18C"}],
    }
    after = turn(agents, session.id, [result])
    assert after[0].type == "user.custom_tool_result" and after[0].processed_at is not None
    assert next(e for e in after if e.type == "agent.message").content[0].text == "It is 18C"
    assert after[-1].stop_reason.type == "end_turn"
    import pytest

    with pytest.raises(anthropic.BadRequestError):  # answering twice is refused
        agents.beta.sessions.events.send(session.id, events=[result])


def test_sdk_session_tool_runner_drives_custom_tools(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    """The SDK's own client-side runner for custom tools works against corral unchanged."""
    import asyncio

    from anthropic import AsyncAnthropic
    from anthropic.lib.tools import beta_async_tool

    session = new_session(agents, tools=[WEATHER])
    calls: list[str] = []

    @beta_async_tool
    async def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    fake.reply(tool_use=[("get_weather", {"city": "Oslo"})])
    fake.respond_with(lambda body: Reply(text=f"Result: {tool_results(body)[-1][1]}"))

    async def drive() -> None:
        client = AsyncAnthropic(base_url=str(agents.base_url), api_key=agents.api_key, max_retries=0)
        runner = client.beta.sessions.events.tool_runner(session.id, tools=[get_weather], max_idle=0.5)
        async with asyncio.timeout(20):
            await client.beta.sessions.events.send(session.id, events=[text("weather in Oslo?")])
            await runner.until_done()
        await client.close()

    asyncio.run(drive())
    assert calls == ["Oslo"]
    done = wait_for(lambda: [e for e in agents.beta.sessions.events.list(session.id) if e.type == "agent.message"])
    assert done[-1].content[0].text == "Result: sunny in Oslo"


def test_denied_tool_call_tells_the_model(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    toolset = {
        "type": "agent_toolset_20260401",
        "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
    }
    session = new_session(agents, tools=[toolset])
    fake.reply(tool_use=[("bash", {"command": "rm -rf /workspace/tmp"})])
    fake.respond_with(lambda body: Reply(text=f"noted: {tool_results(body)[-1][1]}"))
    seen = turn(agents, session.id, [text("clean up")])
    use = next(e for e in seen if e.type == "agent.tool_use")
    assert use.evaluated_permission == "ask" and use.evaluation.type == "always_ask"
    assert seen[-1].stop_reason.type == "requires_action" and seen[-1].stop_reason.event_ids == [use.id]
    deny = {"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "deny", "deny_message": "list instead"}
    after = turn(agents, session.id, [deny])
    reply = next(e for e in after if e.type == "agent.message").content[0].text
    assert "Denied by the user: list instead" in reply
    assert "agent.tool_result" not in types(after)


def test_disabled_and_unknown_tools_are_refused(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    toolset = {"type": "agent_toolset_20260401", "configs": [{"name": "bash", "enabled": False}]}
    session = new_session(agents, tools=[toolset])
    fake.reply(tool_use=[("bash", {"command": "ls"}), ("teleport", {"to": "mars"})])
    fake.respond_with(lambda body: Reply(text=" | ".join(r for _, r in tool_results(body))))
    seen = turn(agents, session.id, [text("go")])
    uses = [e for e in seen if e.type == "agent.tool_use"]
    assert [(u.name, u.evaluated_permission, u.evaluation) for u in uses] == [
        ("bash", "deny", None),
        ("teleport", "deny", None),
    ]
    reply = next(e for e in seen if e.type == "agent.message").content[0].text
    assert "not enabled" in reply and "no tool named 'teleport'" in reply
    offered = [t["name"] for t in fake.model_requests[0].json.get("tools", [])]
    assert "bash" not in offered


def test_message_sent_mid_turn_joins_the_next_model_call(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents, tools=[WEATHER])
    fake.reply(text="thinking slowly", delay=0.2)
    fake.respond_with(lambda body: Reply(text=f"got: {last_user_text(body)}"))
    seen: list = []
    with agents.beta.sessions.events.stream(session.id) as stream:
        agents.beta.sessions.events.send(session.id, events=[text("first")])
        sent_second = False
        for event in stream:
            seen.append(event)
            if event.type == "span.model_request_start" and not sent_second:
                sent_second = True
                agents.beta.sessions.events.send(session.id, events=[text("second")])
            if event.type == "session.status_idle":
                break
    messages = [e.content[0].text for e in seen if e.type == "agent.message"]
    assert messages[0] == "thinking slowly"
    if len(messages) == 1:  # the second message may start its own turn
        more = turn(agents, session.id, []) if agents.beta.sessions.retrieve(session.id).status == "running" else []
        messages += [e.content[0].text for e in more if e.type == "agent.message"]
        messages += [
            e.content[0].text for e in agents.beta.sessions.events.list(session.id) if e.type == "agent.message"
        ][1:]
    assert "got: second" in messages
    request = fake.model_requests[-1].json["messages"]
    assert [m["role"] for m in request] == ["user", "assistant", "user"]


def test_steps_of_one_turn_chain_their_spans(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    """A step whose next move is a model call appends that call's span start with its own events:
    every span of the turn still opens once, closes once, in order, and none is marked failed."""
    session = new_session(agents)
    for i in range(3):
        fake.reply(tool_use=[("teleport", {"to": f"planet {i}"})])
    fake.reply(text="done")
    seen = turn(agents, session.id, [text("go")])
    spans = [
        (e.type, e.id if e.type == "span.model_request_start" else e.model_request_start_id)
        for e in seen
        if e.type.startswith("span.")
    ]
    assert [kind for kind, _ in spans] == ["span.model_request_start", "span.model_request_end"] * 4
    assert all(spans[i][1] == spans[i + 1][1] for i in range(0, 8, 2))
    assert not any(e.is_error for e in seen if e.type == "span.model_request_end")
    assert len(fake.model_requests) == 4
    logged = list(agents.beta.sessions.events.list(session.id, limit=100))
    assert len({e.id for e in logged}) == len(logged)


def test_a_message_arriving_between_steps_is_read_before_the_next_call(
    agents: anthropic.Anthropic, fake: FakeModel
) -> None:
    """The worker keeps the log in memory between the steps of a run; input another writer appends
    meanwhile must still reach the next model call."""
    session = new_session(agents)
    fake.reply(tool_use=[("teleport", {"to": "mars"})], delay=0.3)
    fake.respond_with(lambda body: Reply(text=f"got: {last_user_text(body)}"))
    seen: list = []
    with agents.beta.sessions.events.stream(session.id) as stream:
        agents.beta.sessions.events.send(session.id, events=[text("first")])
        for event in stream:
            seen.append(event)
            if event.type == "span.model_request_start" and len(seen) < 5:
                agents.beta.sessions.events.send(session.id, events=[text("second")])
            if event.type == "session.status_idle":
                break
    second = fake.model_requests[1].json["messages"]
    texts = [b.get("text") for m in second for b in m["content"] if isinstance(b, dict)]
    assert "second" in texts
    assert [e.content[0].text for e in seen if e.type == "agent.message"] == ["got: second"]
    logged = list(agents.beta.sessions.events.list(session.id, limit=100))
    assert [e.type for e in logged].count("user.message") == 2
    assert len({e.id for e in logged}) == len(logged)


def test_budget_stops_the_session(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    created = agents.beta.agents.create(name="pricey", model="claude-budget-1")
    env = agents.beta.environments.create(name=f"budget-{time.time_ns()}")
    session = agents.beta.sessions.create(
        agent=created.id,
        environment_id=env.id,
        budget={"type": "limit", "max_list_cost": {"amount": "100", "currency": "USD"}},
    )
    fake.reply(tool_use=[("nothing", {})]).reply(text="never")
    seen = turn(agents, session.id, [text("spend")])
    assert seen[-1].stop_reason.type == "budget_reached"
    assert types(seen).count("span.model_request_start") == 1


def test_budget_on_a_model_without_price_stops_at_once(agents: anthropic.Anthropic) -> None:
    created = agents.beta.agents.create(name="unpriced", model="mystery-model")
    env = agents.beta.environments.create(name=f"unpriced-{time.time_ns()}")
    session = agents.beta.sessions.create(
        agent=created.id,
        environment_id=env.id,
        budget={"type": "limit", "max_list_cost": {"amount": "100", "currency": "USD"}},
    )
    seen = turn(agents, session.id, [text("hi")])
    assert seen[-1].stop_reason.type == "budget_reached" and "span.model_request_start" not in types(seen)


def test_context_is_compacted_near_the_window(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents)
    big = "word " * 5000  # ~25k chars -> the fake reports ~6k input tokens, over the 5k threshold
    fake.reply(text="noted the long text").reply(text="SUMMARY: user sent a long text").reply(
        text="answer after compaction"
    )
    turn(agents, session.id, [text(big)])
    seen = turn(agents, session.id, [text("and now?")])
    assert "agent.thread_context_compacted" in types(seen)
    last = fake.model_requests[-1].json["messages"]
    assert "SUMMARY: user sent a long text" in last[0]["content"][0]["text"]
    assert big not in str(last)
    assert next(e for e in seen if e.type == "agent.message").content[0].text == "answer after compaction"


def test_openai_compatible_models(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    session = new_session(agents, model="openai/local-llama")
    fake.reply(text="hello from an open model")
    seen = turn(agents, session.id, [text("hi")])
    assert next(e for e in seen if e.type == "agent.message").content[0].text == "hello from an open model"
    request = fake.model_requests[-1]
    assert request.path.endswith("/chat/completions") and request.json["model"] == "local-llama"


def test_sessions_run_concurrently(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    sessions = [new_session(agents) for _ in range(6)]
    fake.respond_with(lambda body: Reply(text=f"re: {last_user_text(body)}", delay=0.05))
    results: dict[str, list] = {}

    def run(s) -> None:
        results[s.id] = turn(agents, s.id, [text(s.id)])

    threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in sessions:
        assert next(e for e in results[s.id] if e.type == "agent.message").content[0].text == f"re: {s.id}"
