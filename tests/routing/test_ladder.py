"""ladder.choose: which rungs of which ladder may serve a request, as one pre-rendered cluster."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core import Capability, Dialect, Failure, Impact, ToolMode
from extproc.core.names import cluster_name
from extproc.policy import Policy, Rung
from extproc.routing.ladder import (
    NeedBody,
    Refusal,
    RequestFeatures,
    Route,
    choose,
    orderings,
    prompt_tokens_estimate,
)
from tests.builders import make_policy, policies, request_features


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
    )
    return dataclasses.replace(base, **changes)


def routed(result: Route | Refusal | NeedBody) -> Route:
    assert isinstance(result, Route), result
    return result


# ---- examples ---------------------------------------------------------------------------------


def test_healthy_request_gets_the_whole_ladder_in_order() -> None:
    route = routed(choose(make_policy(), features()))
    # Envoy's attempts are every slot (two a rung by default); max_attempts caps the real tries.
    assert route == Route(ladder="main", rungs=(0, 1, 2), cluster="rw.main.7", tries=6, skip_reason=None)


def test_stream_requests_use_the_sse_twin_cluster() -> None:
    route = routed(choose(make_policy(), features(stream=True)))
    assert route.cluster == "rw.main.7.sse"


def test_json_mode_skips_rungs_without_it_and_says_why() -> None:
    policy = make_policy(
        ladders={"l": [{"provider": "small", "strip_tools": True}, {"provider": "primary"}]},
        models=[{"match": "*", "ladder": "l"}],
    )
    route = routed(choose(policy, features(json_mode=True)))
    assert (route.rungs, route.cluster, route.skip_reason) == ((1,), "rw.l.2", Failure.SCHEMA_ERROR)


def test_streaming_skips_rungs_without_it() -> None:
    providers = make_policy().model_dump(mode="json")["providers"]
    providers["small"]["capabilities"] = ["tools", "json_mode"]
    policy = make_policy(
        providers=providers,
        ladders={"l": [{"provider": "small"}, {"provider": "primary"}]},
        models=[{"match": "*", "ladder": "l"}],
    )
    route = routed(choose(policy, features(stream=True)))
    assert (route.rungs, route.skip_reason) == ((1,), Failure.TOOL_MISMATCH)


def test_context_window_skips_small_rungs_but_keeps_larger_later_ones() -> None:
    # primary 8000, secondary 200000, small 4000 tokens; ~4 bytes a token.
    route = routed(choose(make_policy(), features(body_bytes=4 * 10_000)))
    assert (route.rungs, route.cluster, route.skip_reason) == ((1,), "rw.main.2", Failure.CONTEXT_OVERFLOW)


def test_max_tokens_counts_towards_the_context_needed() -> None:
    assert routed(choose(make_policy(), features(body_bytes=4 * 3000))).rungs == (0, 1, 2)
    assert routed(choose(make_policy(), features(body_bytes=4 * 3000, max_tokens=2000))).rungs == (0, 1)


def test_request_exactly_at_the_window_fits() -> None:
    assert routed(choose(make_policy(), features(body_bytes=4 * 4000))).rungs == (0, 1, 2)
    assert routed(choose(make_policy(), features(body_bytes=4 * 4000 + 4))).rungs == (0, 1)


def test_unknown_body_size_counts_as_empty() -> None:
    assert prompt_tokens_estimate(None) == 0
    assert prompt_tokens_estimate(4001) == 1000
    assert routed(choose(make_policy(), features(body_bytes=None))).rungs == (0, 1, 2)


def test_refusal_when_no_rung_has_a_big_enough_window() -> None:
    assert choose(make_policy(), features(body_bytes=4 * 300_000)) == Refusal(
        Failure.CONTEXT_OVERFLOW, "ladder 'main': the request is larger than every rung's context window"
    )


def test_refusal_with_mixed_reasons_is_a_client_error() -> None:
    policy = make_policy(
        ladders={"l": [{"provider": "small"}, {"provider": "primary"}]}, models=[{"match": "*", "ladder": "l"}]
    )
    result = choose(policy, features(json_mode=True, has_tools=False, body_bytes=4 * 9000))
    assert result == Refusal(Failure.CLIENT_ERROR, "ladder 'l': no rung of the ladder can serve this request")


def test_unknown_model_is_refused_as_a_client_error() -> None:
    result = choose(make_policy(), features(model="llama-3"))
    assert isinstance(result, Refusal)
    assert result.failure is Failure.CLIENT_ERROR
    assert "'llama-3'" in result.message


def test_body_is_needed_only_while_tools_are_unknown_and_matter() -> None:
    policy = make_policy()
    assert choose(policy, features(model="tools-x")) == NeedBody()
    assert routed(choose(policy, features(model="tools-x", has_tools=False))).rungs == (0, 1)
    assert routed(choose(policy, features(model="tools-x", has_tools=True))).rungs == (0,)


def test_a_tool_less_rung_that_is_skipped_anyway_needs_no_body() -> None:
    # The small rung lacks JSON mode too: a JSON-mode request never reaches the tools question.
    assert routed(choose(make_policy(), features(model="tools-x", json_mode=True))).rungs == (0,)


def test_strip_tools_keeps_a_tool_less_rung_without_the_body() -> None:
    route = routed(choose(make_policy(), features(has_tools=None)))
    assert route.rungs == (0, 1, 2)
    assert routed(choose(make_policy(), features(has_tools=True))).rungs == (0, 1, 2)


def test_tool_request_with_no_tool_rung_is_refused_as_tool_mismatch() -> None:
    policy = make_policy(ladders={"l": [{"provider": "small"}]}, models=[{"match": "*", "ladder": "l"}])
    assert choose(policy, features(has_tools=True)) == Refusal(
        Failure.TOOL_MISMATCH, "ladder 'l': no rung supports what the request needs (tools or streaming)"
    )


def test_envoys_attempts_are_every_slot_of_the_ordering() -> None:
    policy = make_policy()
    assert routed(choose(policy, features(model="retry-x"))).tries == 4  # 2 + 2 slots
    # max_attempts caps the tries that reach a provider (the attempt filter counts them), not
    # Envoy's attempts: a skipped slot costs no provider call.
    capped = make_policy(max_attempts=2)
    assert routed(choose(capped, features(model="retry-x"))).tries == 4
    assert routed(choose(capped, features(model="retry-x", json_mode=True))).tries == 2  # only rung 0: 2 slots


def test_task_override_routes_to_its_ladder() -> None:
    route = routed(choose(make_policy(), features(task="summarizer")))
    assert (route.ladder, route.rungs) == ("summary", (0, 1))


def test_cluster_name_encodes_the_rung_set_as_a_hex_mask() -> None:
    assert cluster_name("main", (0,), False) == "rw.main.1"
    assert cluster_name("main", (1, 3), True) == "rw.main.a.sse"
    assert cluster_name("l", (0, 1, 2, 3, 4, 5), False) == "rw.l.3f"


def test_orderings_are_every_non_empty_subsequence_in_a_stable_order() -> None:
    policy = make_policy(ladders={"a": [{"provider": "primary"}] * 3}, models=[{"match": "*", "ladder": "a"}])
    assert list(orderings(policy)) == [
        ("a", (0,)),
        ("a", (1,)),
        ("a", (0, 1)),
        ("a", (2,)),
        ("a", (0, 2)),
        ("a", (1, 2)),
        ("a", (0, 1, 2)),
    ]


# ---- properties -------------------------------------------------------------------------------


def blockers(policy: Policy, ladder: str, index: int, f: RequestFeatures) -> set[Failure]:
    """Every reason, apart from unknown tools, why a rung cannot serve the request."""
    rung = policy.ladders[ladder][index]
    provider = policy.providers[rung.provider]
    caps = provider.capabilities
    needed = prompt_tokens_estimate(f.body_bytes) + (f.max_tokens or 0)
    reasons = set()
    allowance = policy.allowance(f.task, rung.model_for(f.model))
    if allowance == "forbidden" or (allowance == "degraded_only" and index == 0):
        reasons.add(Failure.NOT_PERMITTED)
    if f.stream and Capability.STREAMING not in caps:
        reasons.add(Failure.TOOL_MISMATCH)
    if f.json_mode and Capability.JSON_MODE not in caps:
        reasons.add(Failure.SCHEMA_ERROR)
    if needed > provider.context_window and not policy.context.trim:
        reasons.add(Failure.CONTEXT_OVERFLOW)
    if f.has_tools and sends_tools_to_a_tool_less_provider(policy, rung):
        reasons.add(Failure.TOOL_MISMATCH)
    return reasons


def sends_tools_to_a_tool_less_provider(policy: Policy, rung: Rung) -> bool:
    # full, read_only and retrieval_only send tools (the latter two a subset); strip_tools none.
    caps = policy.providers[rung.provider].capabilities
    sends = rung.tool_mode in (ToolMode.FULL, ToolMode.READ_ONLY, ToolMode.RETRIEVAL_ONLY) and not rung.strip_tools
    return sends and Capability.TOOLS not in caps


def tools_unknown_matter(policy: Policy, rung: Rung, f: RequestFeatures) -> bool:
    return f.has_tools is None and sends_tools_to_a_tool_less_provider(policy, rung)


@st.composite
def policy_and_request(draw: st.DrawFn) -> tuple[Policy, RequestFeatures]:
    policy = draw(policies())
    return policy, draw(request_features(policy))


@settings(max_examples=100, deadline=None)
@given(policy_and_request())
def test_choice_is_an_in_order_subsequence_named_by_a_rendered_cluster(case: tuple[Policy, RequestFeatures]) -> None:
    policy, f = case
    result = choose(policy, f)
    ladder_name = policy.ladder_for(f.model, f.task)
    if ladder_name is None:
        assert isinstance(result, Refusal) and result.failure is Failure.CLIENT_ERROR
        return
    rungs = policy.ladders[ladder_name]
    fitting = [i for i in range(len(rungs)) if not blockers(policy, ladder_name, i, f)]
    if any(tools_unknown_matter(policy, rungs[i], f) for i in fitting):
        assert isinstance(result, NeedBody)
        return
    if not fitting:
        assert isinstance(result, Refusal)
        reasons = {r for i in range(len(rungs)) for r in blockers(policy, ladder_name, i, f)}
        assert result.failure in reasons | {Failure.CLIENT_ERROR}
        return
    route = routed(result)
    assert route.ladder == ladder_name
    assert list(route.rungs) == fitting  # exactly the rungs that fit, in ladder order
    assert list(route.rungs) == sorted(set(route.rungs))
    assert (route.ladder, route.rungs) in set(orderings(policy))
    assert route.cluster == cluster_name(route.ladder, route.rungs, f.stream)
    slots = sum(rungs[i].attempts for i in route.rungs)
    assert route.tries == slots
    if route.rungs[0] == 0:
        assert route.skip_reason is None
    else:
        assert route.skip_reason in blockers(policy, ladder_name, 0, f)


@settings(max_examples=100, deadline=None)
@given(policy_and_request())
def test_knowing_the_tools_settles_the_choice_and_tools_only_narrow_it(case: tuple[Policy, RequestFeatures]) -> None:
    policy, f = case
    without = choose(policy, dataclasses.replace(f, has_tools=False))
    with_tools = choose(policy, dataclasses.replace(f, has_tools=True))
    assert not isinstance(without, NeedBody)
    assert not isinstance(with_tools, NeedBody)
    if isinstance(with_tools, Route):
        assert isinstance(without, Route)
        assert set(with_tools.rungs) <= set(without.rungs)


@pytest.mark.parametrize("stream", [False, True])
def test_every_ordering_has_a_distinct_cluster_name(stream: bool) -> None:
    policy = make_policy()
    names = [cluster_name(ladder, order, stream) for ladder, order in orderings(policy)]
    assert len(names) == len(set(names))
