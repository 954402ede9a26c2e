"""Product tiers through real Envoy (issue 11, T6): when no rung can serve, a task class that
names its own answer gets it — a handoff notice — as a normal completion (and a whole stream) in
the client's dialect, flagged with its tier, instead of an error. With Envoy's crash check on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import KEY_ENV, Fleet
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
BANNER = "Some account actions are temporarily unavailable."
NOTICE = "Our assistant is unavailable right now; a person has your request and will reply by email."


@pytest.fixture(scope="module")
def tiered(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    policy = fleet.policy(
        tmp_path_factory.mktemp("tiers"),
        tasks={
            "default": {"min_output_tokens": 1, "when_exhausted": {"tier": 3, "message": NOTICE}},
            "summarizer": {"min_output_tokens": 10},
        },
    )
    # Tier 2 of the product: the fallback rung keeps only the retrieval tool, and says so.
    policy["ladders"]["main"][1]["tool_mode"] = "retrieval_only"
    policy["tools"] = {"retrieval": ["search_kb"]}
    policy["tier_notices"] = {1: BANNER}
    with running(policy, env=KEY_ENV) as stack:
        yield stack


@pytest.fixture
def outage(fleet: Fleet, tiered: Stack) -> Iterator[Stack]:
    fleet.reset()
    tiered.envoy_trouble()
    for mock in (fleet.primary, fleet.secondary, fleet.small):
        mock.set_mode("status:503")
    yield tiered
    fleet.reset()
    trouble = tiered.envoy_trouble()
    assert not trouble, f"Envoy reported bugs or crashed: {trouble}"


def test_an_outage_of_every_rung_is_answered_with_the_tasks_handoff_notice(outage: Stack) -> None:
    raw = outage.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.headers["x-rungway-tier"] == "3" and raw.headers["x-rungway-degraded"] == "true"
    assert raw.headers["x-rungway-served-by"] == "rungway/handoff"
    assert raw.parse().choices[0].message.content == NOTICE


def test_a_stream_gets_the_notice_as_a_whole_stream(outage: Stack) -> None:
    with outage.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == NOTICE
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_an_anthropic_client_gets_the_notice_in_its_dialect(outage: Stack) -> None:
    message = outage.anthropic().messages.create(model="gpt-4o", max_tokens=100, messages=HI)
    assert message.content[0].type == "text" and message.content[0].text == NOTICE


def test_a_request_no_rung_can_hold_still_gets_its_error(outage: Stack) -> None:
    huge: Any = [{"role": "user", "content": "word " * 900_000}]
    with pytest.raises(openai.APIStatusError) as caught:
        outage.openai().chat.completions.create(model="gpt-4o", messages=huge)
    assert caught.value.status_code in (400, 413)


def tool(name: str) -> Any:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def test_a_retrieval_only_rung_keeps_only_search_and_says_what_is_limited(tiered: Stack, fleet: Fleet) -> None:
    fleet.reset()
    fleet.primary.set_mode("status:503")
    try:
        raw = tiered.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HI, tools=[tool("issue_refund"), tool("search_kb")]
        )
        assert raw.headers["x-rungway-tier"] == "1" and raw.headers["x-rungway-tool-mode"] == "retrieval_only"
        assert raw.headers["x-rungway-notice"] == BANNER
        assert raw.headers["x-rungway-tools-removed"] == "issue_refund"
        sent = fleet.secondary.requests[-1].json or {}
        assert [t["name"] for t in sent["tools"]] == ["search_kb"]  # never the refund tool
    finally:
        fleet.reset()
        assert not tiered.envoy_trouble()
