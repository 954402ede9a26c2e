"""routing.capability: the capability matrix and each rung's tool mode, as choose and explain
apply them (T5), and context trimming instead of skipping a small window (F6)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from extproc.core import Dialect, Failure, Impact, ToolMode
from extproc.policy import PolicyError
from extproc.routing import Refusal, RequestFeatures, Route, choose, matrix_forbids, tool_mode_of
from extproc.routing.explain import explain, features_for
from tests.builders import make_policy, policy_data


def features(model: str = "gpt-4o", **changes: Any) -> RequestFeatures:
    base = RequestFeatures(
        dialect=Dialect.OPENAI,
        model=model,
        stream=False,
        json_mode=False,
        max_tokens=None,
        body_bytes=200,
        tenant="acme",
        task="default",
        impact=Impact.CUSTOMER_FACING,
        has_tools=False,
    )
    return dataclasses.replace(base, **changes)


def test_a_forbidden_model_is_skipped_for_its_task_and_the_refusal_says_why() -> None:
    policy = make_policy(capability_matrix={"default": {"claude-*": "forbidden"}})
    route = choose(policy, features())
    assert isinstance(route, Route) and route.rungs == (0, 2)
    assert matrix_forbids(policy, "default", "main", 1, "gpt-4o") == (
        "capability matrix: task 'default' may not use model 'claude-fallback'"
    )
    only = make_policy(capability_matrix={"default": {"*": "forbidden"}})
    refused = choose(only, features())
    assert isinstance(refused, Refusal) and refused.failure is Failure.NOT_PERMITTED
    assert "capability matrix: task 'default' may not use model 'gpt-4o'" in refused.message


def test_a_degraded_only_model_never_serves_as_the_first_rung() -> None:
    policy = make_policy(capability_matrix={"default": {"gpt-4o": "degraded_only", "small-model": "degraded_only"}})
    route = choose(policy, features())
    # The first rung is skipped (its answer would not be flagged degraded); the third serves
    # only after the second failed, so its answer always is.
    assert isinstance(route, Route) and route.rungs == (1, 2) and route.skip_reason is Failure.NOT_PERMITTED


def test_an_exact_model_beats_a_glob_in_the_matrix() -> None:
    policy = make_policy(capability_matrix={"default": {"*": "forbidden", "gpt-4o": "allowed"}})
    assert policy.allowance("default", "gpt-4o") == "allowed"
    assert policy.allowance("default", "claude-fallback") == "forbidden"
    assert policy.allowance("summarizer", "claude-fallback") == "allowed"


def test_the_matrix_names_only_known_task_classes() -> None:
    with pytest.raises(PolicyError, match="capability_matrix: unknown task class 'codegen'"):
        make_policy(capability_matrix={"codegen": {"*": "forbidden"}})
    with pytest.raises(PolicyError):
        make_policy(capability_matrix={"default": {"*": "sometimes"}})


def test_write_tools_are_never_offered_below_the_tier_the_policy_names() -> None:
    policy = make_policy(tools={"write": ["issue_refund"], "write_lowest_tier": 0})
    assert [tool_mode_of(policy, "main", i) for i in range(3)] == [
        ToolMode.FULL,
        ToolMode.READ_ONLY,
        ToolMode.NO_TOOLS,  # strip_tools on a provider without tool calling
    ]
    lenient = make_policy(tools={"write": ["issue_refund"], "write_lowest_tier": 1})
    assert tool_mode_of(lenient, "main", 1) is ToolMode.FULL
    assert tool_mode_of(make_policy(), "main", 1) is ToolMode.FULL  # no write tools listed


def test_a_rung_that_sends_no_tools_may_serve_a_tool_request_on_a_tool_less_provider() -> None:
    data = policy_data()
    data["ladders"]["tool_check"][1]["tool_mode"] = "plan_only"
    planned = make_policy(ladders=data["ladders"])
    assert choose(planned, features("tools-x", has_tools=True)) == choose(planned, features("tools-x"))
    data["ladders"]["tool_check"][1]["tool_mode"] = "read_only"  # would still send tools: skipped
    read = make_policy(ladders=data["ladders"])
    route = choose(read, features("tools-x", has_tools=True))
    assert isinstance(route, Route) and route.rungs == (0,)


def test_a_small_window_is_trimmed_to_rather_than_skipped_when_the_policy_says_so() -> None:
    big = features(body_bytes=4 * 6000)  # 6000 tokens: over the small rung's 4000
    route = choose(make_policy(), big)
    assert isinstance(route, Route) and route.rungs == (0, 1)
    trimming = choose(make_policy(context={"trim": True}), big)
    assert isinstance(trimming, Route) and trimming.rungs == (0, 1, 2)


def test_explain_names_the_matrix_the_tool_modes_and_trimming() -> None:
    policy = make_policy(
        capability_matrix={"default": {"claude-*": "forbidden"}},
        tools={"write": ["issue_refund"]},
        context={"trim": True},
    )
    result = explain(
        policy, features_for(policy, tenant="acme", task="default", model="gpt-4o", stream=False, tools=True)
    )
    first, second, third = result.rungs
    assert first.serves and first.tool_mode == "full"
    assert first.notes == (
        "a longer history is trimmed to its 8000-token window (system prompt and latest turns kept)",
    )
    assert not second.serves and second.reason.startswith("capability matrix: task 'default' may not use")
    assert second.tool_mode == "read_only" and second.notes[0] == "write tools removed (issue_refund)"
    assert third.tool_mode == "no_tools" and third.notes[0] == "tools removed"
    assert "trimmed to its 4000-token window" in third.notes[1]


def test_explain_with_a_prompt_size_names_the_window_it_overflows_or_trims_to() -> None:
    def verdicts(policy: Any) -> list[str]:
        f = features_for(
            policy, tenant="acme", task="default", model="gpt-4o", stream=False, tools=False, prompt_tokens=6000
        )
        return [v.reason or "; ".join(v.notes) for v in explain(policy, f).rungs]

    assert verdicts(make_policy())[2] == "context window 4000 < 6000 tokens needed"
    assert verdicts(make_policy(context={"trim": True}))[2] == (
        "tools removed; history trimmed to its 4000-token window (6000 needed; system prompt and latest turns kept)"
    )
