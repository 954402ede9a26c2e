"""Capability matrix, tool modes and context on hop through real Envoy (issue 11: T5, F6).

The mock providers record what each rung received: a lower rung never sees a write tool, a
plan_only rung sees no tools and an instruction to plan, a small-window rung sees the system
prompt and the latest turns of a long conversation, with the middle left out and marked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import KEY_ENV, Fleet
from tests.stack import REPO, Stack, body_of, running

pytestmark = pytest.mark.e2e


def _tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": f"{name} for an order", "parameters": {"type": "object"}},
    }


TOOLS: Any = [_tool("issue_refund"), _tool("lookup_order")]
SYSTEM = "You are the support assistant of Example Shop. Never promise a refund yourself."


def _policy(fleet: Fleet, key_dir: Path) -> dict[str, Any]:
    policy = fleet.policy(
        key_dir,
        tools={"write": ["issue_refund"], "write_lowest_tier": 0},
        context={"trim": True},
        capability_matrix={"summarizer": {"claude-*": "forbidden", "small-model": "degraded_only"}},
    )
    policy["ladders"]["plan"] = [
        {"provider": "primary", "timeout_s": 2},
        {"provider": "small", "model": "small-model", "tool_mode": "plan_only"},
    ]
    policy["ladders"]["long"] = [
        {"provider": "primary", "timeout_s": 2},
        {"provider": "small", "model": "small-model", "context_window": 400},
    ]
    policy["models"] += [{"match": "plan-*", "ladder": "plan"}, {"match": "long-*", "ladder": "long"}]
    return policy


@pytest.fixture(scope="module")
def modes(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(_policy(fleet, tmp_path_factory.mktemp("modes")), env=KEY_ENV) as stack:
        yield stack


@pytest.fixture
def served(modes: Stack, fleet: Fleet) -> Iterator[Stack]:
    fleet.reset()
    modes.envoy_trouble()
    yield modes
    fleet.reset()
    trouble = modes.envoy_trouble()
    assert not trouble, f"Envoy reported bugs or crashed: {trouble}"


def test_a_write_tool_is_never_offered_below_its_tier(served: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    pick_refund: Any = {"type": "function", "function": {"name": "issue_refund"}}
    raw = served.openai().chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "refund order 7"}],
        tools=TOOLS,
        tool_choice=pick_refund,
    )
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-tool-mode"] == "read_only"
    assert raw.headers["x-rungway-tools-removed"] == "issue_refund"
    assert raw.headers["x-rungway-degraded"] == "true"
    assert raw.parse().choices[0].message.content
    # The tier-0 rung was offered both tools; the tier-1 rung only the read tool, and a
    # tool_choice that no longer names a removed tool (Anthropic would answer 400).
    assert [t["function"]["name"] for t in body_of(fleet.primary.requests[-1])["tools"]] == [
        "issue_refund",
        "lookup_order",
    ]
    sent = body_of(fleet.secondary.requests[-1])
    assert [t["name"] for t in sent["tools"]] == ["lookup_order"]
    assert sent["tool_choice"] == {"type": "auto"}
    assert "issue_refund" not in json.dumps(sent)
    # The strip_tools rung below is never offered a tool at all.
    fleet.reset()
    fleet.primary.set_mode("status:503")
    fleet.secondary.set_mode("status:529")
    raw = served.openai().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "refund order 7"}], tools=TOOLS, tool_choice=pick_refund
    )
    assert raw.headers["x-rungway-served-by"] == "small/small-model"
    assert raw.headers["x-rungway-tool-mode"] == "no_tools"
    assert raw.headers["x-rungway-tools-removed"] == "issue_refund,lookup_order"
    sent = body_of(fleet.small.requests[-1])
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & sent.keys()
    assert 'rungway_tools_removed_total{ladder="main",rung="1",tool_mode="read_only"}' in served.metrics()


def test_a_plan_only_rung_gets_no_tools_and_its_answer_is_marked_as_a_plan(served: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    raw = served.anthropic().messages.with_raw_response.create(
        model="plan-agent",
        max_tokens=200,
        system=SYSTEM,
        tools=[{"name": "lookup_order", "description": "find an order", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "lookup_order"},
        messages=[
            {"role": "user", "content": "where is order 7?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup_order", "input": {"order": 7}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "shipped"}]},
            {"role": "user", "content": "and order 8?"},
        ],
    )
    headers, message = raw.headers, raw.parse()
    assert headers["x-rungway-served-by"] == "small/small-model"
    assert headers["x-rungway-tool-mode"] == "plan_only"
    assert headers["x-rungway-tools-removed"] == "lookup_order"
    assert message.content[0].type == "text"
    sent = body_of(fleet.small.requests[-1])  # an OpenAI provider, translated from Anthropic
    assert not {"tools", "tool_choice"} & sent.keys()
    system = "\n".join(m["content"] for m in sent["messages"] if m["role"] == "system")
    # The client's system prompt, then Rungway's own instruction, marked.
    assert system.startswith(SYSTEM + "\n\n[rungway] Tools are not available")
    assert "planned_tool_calls" in system and "lookup_order" in system
    # The conversation's earlier call and result reach the tool-less rung as text.
    texts = json.dumps(sent["messages"])
    assert "[called tool lookup_order with" in texts and "shipped" in texts
    assert not any("tool_calls" in m or m["role"] == "tool" for m in sent["messages"])


def _long_openai_conversation() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for turn in range(12):
        messages.append({"role": "user", "content": f"question {turn}: " + "tell me more " * 20})
        messages.append({"role": "assistant", "content": f"answer {turn}: " + "here is more " * 20})
    messages += [
        {"role": "user", "content": "look up order 7"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_7", "type": "function", "function": {"name": "lookup_order", "arguments": '{"o":7}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "order 7 shipped"},
        {"role": "user", "content": "thanks, and the last question?"},
    ]
    return messages


def test_a_long_conversation_hopping_to_a_small_window_is_trimmed_and_flagged(served: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    messages = _long_openai_conversation()
    raw = served.openai().chat.completions.with_raw_response.create(model="long-chat", messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-rungway-served-by"] == "small/small-model"
    trimmed = int(raw.headers["x-rungway-context-trimmed"])
    assert trimmed > 0 and raw.headers["x-rungway-degraded"] == "true"
    assert raw.parse().choices[0].message.content
    assert body_of(fleet.primary.requests[-1])["messages"] == messages  # the big rung got it whole
    sent = body_of(fleet.small.requests[-1])["messages"]
    assert sent[0] == {"role": "system", "content": SYSTEM}
    assert sent[1]["role"] == "user" and sent[1]["content"].startswith(f"[rungway] {trimmed} earlier messages")
    assert sent[-1] == messages[-1]
    assert len(sent) == len(messages) - trimmed + 1  # + the placeholder
    # The tool call stayed with its result (the window fits the latest turns).
    assert sent[-3]["tool_calls"][0]["id"] == "call_7" and sent[-2]["tool_call_id"] == "call_7"
    # Only the request's own system prompt: nothing of another provider's.
    assert [m["content"] for m in sent if m["role"] == "system"] == [SYSTEM]
    assert len(json.dumps(body_of(fleet.small.requests[-1]), separators=(",", ":"))) // 4 <= 400
    assert re.search(r'rungway_context_trimmed_total\{ladder="long",rung="1"\} [1-9]', served.metrics())


def test_a_stream_is_trimmed_and_flagged_too(served: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    messages = _long_openai_conversation()
    with served.openai().chat.completions.with_streaming_response.create(
        model="long-chat",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
    ) as response:
        headers = response.headers
        chunks: Any = response.parse()
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert headers["x-rungway-served-by"] == "small/small-model"
    assert int(headers["x-rungway-context-trimmed"]) > 0
    assert text.startswith("Hello from small")
    sent = body_of(fleet.small.requests[-1])
    assert sent["stream"] is True and sent["messages"][-1] == messages[-1]


def test_an_anthropic_client_is_trimmed_across_translation(served: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    messages: list[Any] = []
    for turn in range(12):
        messages.append({"role": "user", "content": f"question {turn}: " + "tell me more " * 20})
        messages.append({"role": "assistant", "content": f"answer {turn}: " + "here is more " * 20})
    messages.append({"role": "user", "content": "the last question"})
    raw = served.anthropic().messages.with_raw_response.create(
        model="long-chat", max_tokens=50, system=SYSTEM, messages=messages
    )
    headers = raw.headers
    assert raw.parse().content[0].type == "text"
    trimmed = int(headers["x-rungway-context-trimmed"])
    assert trimmed > 0 and headers["x-rungway-served-by"] == "small/small-model"
    sent = body_of(fleet.small.requests[-1])["messages"]  # OpenAI on the wire
    assert sent[0] == {"role": "system", "content": SYSTEM}
    assert sent[1]["content"].startswith(f"[rungway] {trimmed} earlier messages")
    assert sent[-1] == {"role": "user", "content": "the last question"}
    assert [m["content"] for m in sent if m["role"] == "system"] == [SYSTEM]


def test_the_capability_matrix_keeps_a_task_off_a_forbidden_model(served: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    raw = served.openai().chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "summarise this"}],
        extra_headers={"x-rungway-task": "summarizer"},
    )
    # claude-* is forbidden for summarizer; small-model is degraded_only, and serves as a fallback.
    assert raw.headers["x-rungway-served-by"] == "small/small-model"
    assert raw.headers["x-rungway-degraded"] == "true"
    assert not fleet.secondary.requests
    assert len(fleet.primary.requests) >= 1


def test_policy_explain_names_the_matrix_and_the_tool_modes(fleet: Fleet, tmp_path: Path) -> None:
    policy = {**_policy(fleet, tmp_path), "clients": {"key_store": str(tmp_path / "keys.json")}}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    explain = [sys.executable, "-m", "extproc.cli", "policy", "explain", str(path), "--model", "gpt-4o"]
    result = subprocess.run(
        [*explain, "--task", "summarizer", "--tenant", "acme"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "capability matrix: task 'summarizer' may not use model 'claude-fallback'" in out
    assert "tools read_only" in out and "write tools removed (issue_refund)" in out
    assert "tools no_tools" in out
    long_ladder = subprocess.run(
        [*explain[:-1], "long-chat", "--tenant", "acme"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert "trimmed to its 400-token window" in long_ladder.stdout
