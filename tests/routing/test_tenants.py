"""Per-tenant degradation rules (T2) in the ladder choice, and `policy explain`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from extproc.core import Failure
from extproc.policy import PolicyError, parse_policy
from extproc.routing.explain import explain, features_for
from extproc.routing.ladder import Refusal, Route, choose, tenant_forbids
from tests.builders import make_policy, policy_data


def tenant_policy(**tenants: Any) -> Any:
    providers = policy_data()["providers"]
    providers["primary"]["region"] = "us"
    providers["secondary"]["region"] = "eu"
    return make_policy(providers=providers, tenants=tenants)


def features(policy: Any, tenant: str, task: str = "default") -> Any:
    return features_for(policy, tenant=tenant, task=task, model="gpt-4o", stream=False, tools=False)


def test_a_tenant_never_below_tier_0_keeps_only_the_primary() -> None:
    policy = tenant_policy(hospital={"lowest_tier": 0})
    route = choose(policy, features(policy, "hospital"))
    assert isinstance(route, Route) and route.rungs == (0,)
    other = choose(policy, features(policy, "agency"))  # tenant_defaults: every tier
    assert isinstance(other, Route) and other.rungs == (0, 1, 2)


def test_a_task_override_allows_a_lower_tier_for_one_task_only() -> None:
    policy = tenant_policy(hospital={"lowest_tier": 0, "tasks": {"summarizer": {"lowest_tier": 1}}})
    summary = choose(policy, features(policy, "hospital", "summarizer"))
    assert isinstance(summary, Route) and summary.ladder == "summary" and summary.rungs == (0, 1)
    assert tenant_forbids(policy, "hospital", "default", "main", 1) is not None


def test_residency_removes_providers_outside_the_tenants_regions() -> None:
    policy = tenant_policy(bank={"regions": ["eu"]})
    route = choose(policy, features(policy, "bank"))
    assert isinstance(route, Route) and route.rungs == (1,)  # the US primary and the region-less small are out
    assert route.skip_reason is Failure.NOT_PERMITTED


def test_when_the_only_permitted_rung_is_down_the_tenant_gets_an_honest_refusal() -> None:
    policy = tenant_policy(hospital={"lowest_tier": 0, "message": "Never a fallback for clinical summaries"})
    down = choose(
        policy,
        features(policy, "hospital"),
        lambda key, first: Failure.SERVER_ERROR if key.startswith("primary") else None,
    )
    assert isinstance(down, Refusal) and down.failure is Failure.NOT_PERMITTED
    assert down.message.startswith("Never a fallback for clinical summaries: primary/gpt-4o is unavailable")
    # Without a tenant rule, every rung down is still tried in order (no self-made outage).
    all_down = choose(policy, features(policy, "agency"), lambda key, first: Failure.SERVER_ERROR)
    assert isinstance(all_down, Route) and all_down.rungs == (0, 1, 2)


def test_explain_names_every_skip_reason() -> None:
    policy = tenant_policy(hospital={"lowest_tier": 1, "regions": ["us", "eu"]})
    health = {"secondary/claude-fallback": {"circuit": {"state": "open"}, "score": 0.1}}
    result = explain(policy, replace(features(policy, "hospital"), body_bytes=40_000), health)
    reasons = {v.index: v.reason for v in result.rungs}
    assert reasons[0].startswith("context window 8000 < 10000")  # the primary's window is 8k
    assert reasons[1] == "circuit open"
    assert "below the lowest tier tenant 'hospital' permits" in reasons[2]
    assert result.outcome.startswith("refused (not_permitted)")
    served = explain(policy, features(policy, "hospital"))
    assert served.outcome == "served by primary/gpt-4o (tier 0)" and [v.serves for v in served.rungs] == [
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("tenants", "problem"),
    [
        ({"x": {"lowest_tier": 4}}, "tenants.x.lowest_tier"),
        ({"x": {"tasks": {"nope": {"lowest_tier": 1}}}}, "tenants.x.tasks: unknown task class 'nope'"),
    ],
)
def test_tenant_rules_are_validated(tenants: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_data(tenants=tenants))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def approving_policy(**tenant: Any) -> Any:
    data = policy_data(tenants={"clinic": {"approval_beyond_tier": 0, **tenant}}, approvals="approvals.json")
    return parse_policy(data)


def test_tiers_beyond_the_approval_line_need_an_approval_in_force() -> None:
    policy = approving_policy()
    route = choose(policy, features(policy, "clinic"))
    assert isinstance(route, Route) and route.rungs == (0,)
    approved = choose(policy, replace(features(policy, "clinic"), approved_tier=1))
    assert isinstance(approved, Route) and approved.rungs == (0, 1)  # tier 2 still needs more
    everything = choose(policy, replace(features(policy, "clinic"), approved_tier=3))
    assert isinstance(everything, Route) and everything.rungs == (0, 1, 2)


def test_an_approval_never_reaches_past_the_lowest_tier_the_tenant_permits() -> None:
    policy = approving_policy(lowest_tier=1)
    route = choose(policy, replace(features(policy, "clinic"), approved_tier=3))
    assert isinstance(route, Route) and route.rungs == (0, 1)


def test_a_refusal_for_want_of_an_approval_says_how_to_approve() -> None:
    policy = approving_policy()
    down = choose(policy, features(policy, "clinic"), health=lambda key, first: Failure.SERVER_ERROR)
    assert isinstance(down, Refusal) and down.failure is Failure.NOT_PERMITTED
    assert "rungway approve --tenant clinic --tier 1" in down.message
    verdicts = explain(policy, features(policy, "clinic")).rungs
    assert "needs an operator's approval" in verdicts[1].reason


def test_asking_for_approvals_needs_an_approvals_file() -> None:
    with pytest.raises(PolicyError, match="approvals"):
        parse_policy(policy_data(tenants={"clinic": {"approval_beyond_tier": 0}}))
