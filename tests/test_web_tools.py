"""`web_fetch` and `web_search` end to end: the fake model calls them, corral runs them in the worker
against a local web site (and its SearXNG-style search endpoint), and the model sees the results."""

from __future__ import annotations

from typing import Any

import anthropic

from corral.tools.web import WebTools

from .fake_model import FakeModel, Reply, tool_results
from .turns import new_session, text, turn
from .web_site import WebSite


def tool_outputs(agents: anthropic.Anthropic, fake: FakeModel, calls: list[tuple[str, dict[str, Any]]], **agent: Any):
    """Run one turn in which the model makes `calls`; return [(is_error, text)] of the results, in order."""
    session = new_session(agents, **agent)
    fake.reply(tool_use=calls)
    fake.respond_with(lambda body: Reply(text=f"{len(tool_results(body))} results"))
    seen = turn(agents, session.id, [text("look it up")], timeout=30)
    assert seen[-1].stop_reason.type == "end_turn"
    return [(bool(e.is_error), "".join(b.text for b in e.content or [])) for e in seen if e.type == "agent.tool_result"]


TOOLSET = {"type": "agent_toolset_20260401"}


def test_web_fetch_turns_pages_into_text_and_follows_redirects(
    agents: anthropic.Anthropic, fake: FakeModel, web_site: WebSite
) -> None:
    page, redirected, missing, binary, big = tool_outputs(
        agents,
        fake,
        [
            ("web_fetch", {"url": f"{web_site.url}/page"}),
            ("web_fetch", {"url": f"{web_site.url}/go"}),
            ("web_fetch", {"url": f"{web_site.url}/nope"}),
            ("web_fetch", {"url": f"{web_site.url}/binary"}),
            ("web_fetch", {"url": f"{web_site.url}/big"}),
        ],
        tools=[TOOLSET],
    )
    assert page[0] is False and "# Field notes" in page[1] and "**herd**" in page[1]
    assert "var secret" not in page[1]  # scripts are dropped
    assert redirected == page  # the final URL and the same text
    assert redirected[1].startswith(f"URL: {web_site.url}/page")
    assert missing[0] is True and "HTTP 404" in missing[1]
    assert binary[0] is True and "not text" in binary[1]
    assert big[0] is False and "[truncated:" in big[1] and len(big[1]) < 101_000


def test_web_fetch_refuses_what_it_must(agents: anthropic.Anthropic, fake: FakeModel, web_site: WebSite) -> None:
    private, metadata, scheme, looping = tool_outputs(
        agents,
        fake,
        [
            ("web_fetch", {"url": "http://10.1.2.3/admin"}),
            ("web_fetch", {"url": "http://169.254.169.254/latest/meta-data/"}),
            ("web_fetch", {"url": "file:///etc/passwd"}),
            ("web_fetch", {"url": f"{web_site.url}/loop"}),
        ],
        tools=[TOOLSET],
    )
    assert private[0] and "non-public address" in private[1]
    assert metadata[0] and "non-public address" in metadata[1]
    assert scheme[0] and "only http(s)" in scheme[1]
    assert looping[0] and "redirects" in looping[1]


def test_agent_domain_rules_apply(agents: anthropic.Anthropic, fake: FakeModel, web_site: WebSite) -> None:
    toolset = {
        "type": "agent_toolset_20260401",
        "configs": [
            {"name": "web_fetch", "allowed_domains": ["example.org"]},
            {"name": "web_search", "blocked_domains": ["example.net"]},
        ],
    }
    fetched, searched = tool_outputs(
        agents,
        fake,
        [("web_fetch", {"url": f"{web_site.url}/page"}), ("web_search", {"query": "herd counting"})],
        tools=[toolset],
    )
    assert fetched[0] and "not in this agent's allowed_domains" in fetched[1]
    assert searched[0] is False and "About herd counting" in searched[1] and "docs.example.org" in searched[1]
    assert "blocked.example.net" not in searched[1]


def test_web_tools_are_offered_with_the_toolset(agents: anthropic.Anthropic, fake: FakeModel) -> None:
    tool_outputs(agents, fake, [], tools=[TOOLSET])
    offered = {t["name"] for t in fake.model_requests[0].json["tools"]}
    assert {"web_fetch", "web_search", "bash"} <= offered


async def test_web_search_without_a_provider_says_how_to_configure_one(agents: anthropic.Anthropic) -> None:
    session = new_session(agents, tools=[TOOLSET])
    tools = WebTools()
    try:
        result = await tools.run(session, "web_search", {"query": "anything"})
    finally:
        await tools.aclose()
    assert result.is_error and "CORRAL_SEARXNG_URL" in result.content[0]["text"]
