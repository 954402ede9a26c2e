"""The hold rule (T2): which refused requests wait for an operator's approval, until when, and
what is left of their route timeout afterwards."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Failure
from extproc.policy import PolicyError, parse_policy
from extproc.routing.explain import explain, features_for
from extproc.routing.hold import (
    DEADLINE_MARGIN_S,
    HeldCount,
    awaits_approval,
    hold_until,
    holds_full,
    remaining_timeout_s,
)
from extproc.routing.ladder import Refusal, choose
from tests.builders import policy_data


def holding_policy(route_timeout_s: float = 600.0, **tenant: Any) -> Any:
    rules = {"approval_beyond_tier": 0, "approval_wait_s": 30, "approval_max_held": 2, **tenant}
    data = policy_data(tenants={"clinic": rules}, approvals="approvals.json", route_timeout_s=route_timeout_s)
    return parse_policy(data)


def primary_down(key: str, first: bool) -> Failure | None:
    return Failure.SERVER_ERROR if key.startswith("primary") else None


def refused(policy: Any, tenant: str = "clinic") -> tuple[Any, Refusal]:
    features = features_for(policy, tenant=tenant, task="default", model="gpt-4o", stream=False, tools=False)
    refusal = choose(policy, features, primary_down)
    assert isinstance(refusal, Refusal)
    return features, refusal


def test_a_request_only_an_approval_could_serve_awaits_one() -> None:
    policy = holding_policy()
    features, refusal = refused(policy)
    assert refusal.failure is Failure.NOT_PERMITTED and awaits_approval(policy, features, refusal)


def test_a_refusal_no_approval_can_lift_is_not_held() -> None:
    # lowest_tier 0: the primary is all the tenant may ever use, approved or not.
    policy = holding_policy(lowest_tier=0)
    features, refusal = refused(policy)
    assert not awaits_approval(policy, features, refusal)
    # A malformed request is no case for an approval either.
    assert not awaits_approval(policy, features, Refusal(Failure.CLIENT_ERROR, "bad"))


def test_a_tenant_without_approvals_never_awaits_one() -> None:
    policy = holding_policy()
    features, refusal = refused(policy)
    other = replace(features, tenant="agency")
    assert not awaits_approval(policy, other, refusal)


def test_the_hold_lasts_the_tenants_wait_and_never_past_the_route_timeout() -> None:
    assert hold_until(holding_policy(), "clinic", 100.0) == 130.0
    assert hold_until(holding_policy(route_timeout_s=10), "clinic", 100.0) == 100.0 + 10 - DEADLINE_MARGIN_S
    assert hold_until(holding_policy(route_timeout_s=0), "clinic", 100.0) == 130.0  # 0: no route timeout
    assert hold_until(holding_policy(route_timeout_s=DEADLINE_MARGIN_S), "clinic", 100.0) is None
    assert hold_until(holding_policy(), "agency", 100.0) is None  # tenant_defaults: no wait


def test_past_its_cap_a_tenant_has_no_more_requests_held() -> None:
    policy = holding_policy()
    assert not holds_full(policy, "clinic", 1)
    assert holds_full(policy, "clinic", 2)


def test_the_hold_comes_off_the_route_timeout() -> None:
    assert remaining_timeout_s(holding_policy(route_timeout_s=60), 25.0) == 35.0
    assert remaining_timeout_s(holding_policy(route_timeout_s=0), 25.0) is None


@given(
    wait=st.floats(min_value=0.1, max_value=240),
    timeout=st.one_of(st.just(0.0), st.floats(min_value=0.5, max_value=3600)),
    now=st.floats(min_value=0, max_value=1e6),
    late=st.floats(min_value=0, max_value=0.5),
)
def test_a_held_request_never_outlives_its_deadline(wait: float, timeout: float, now: float, late: float) -> None:
    policy = holding_policy(route_timeout_s=timeout, approval_wait_s=wait)
    until = hold_until(policy, "clinic", now)
    if until is None:
        assert 0 < timeout <= DEADLINE_MARGIN_S
        return
    held = until - now
    assert 0 < held <= wait + 1e-9
    if timeout:
        # Woken a little late (the next check), the hold and what is left still fit the timeout.
        left = remaining_timeout_s(policy, held + late)
        assert left is not None and held + late + left <= timeout + 1e-6


@pytest.mark.parametrize(
    ("tenant", "problem"),
    [
        ({"approval_wait_s": 30}, "approval_wait_s: holds for an approval only with approval_beyond_tier"),
        ({"approval_beyond_tier": 0, "approval_wait_s": 241}, "approval_wait_s"),
        ({"approval_beyond_tier": 0, "approval_max_held": 0}, "approval_max_held"),
    ],
)
def test_hold_rules_are_validated(tenant: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_data(tenants={"clinic": tenant}, approvals="approvals.json"))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_a_held_count_round_trips_and_refuses_what_is_not_one() -> None:
    count = HeldCount()
    count.take("clinic", owner=7)
    count.take("clinic", owner=8)
    again = HeldCount.decode(count.encode())
    assert again.snapshot() == {"clinic": 2} and again.owners() == {7, 8}
    again.forget({8})
    assert again.held("clinic") == 1
    broken: list[Any] = [{"v": 2, "held": []}, {"held": []}, {"v": 1, "held": [["x"]]}, None]
    for raw in broken:
        with pytest.raises(ValueError, match="held count"):
            HeldCount.decode(raw)


def test_explain_says_a_request_would_be_held_for_an_approval() -> None:
    policy = holding_policy()
    features, _ = refused(policy)
    health = {"primary/gpt-4o": {"circuit": {"state": "open"}, "score": 0.0}}
    outcome = explain(policy, features, health).outcome
    assert outcome.startswith("held up to 30 s for an operator's approval, then refused (not_permitted)")
    assert explain(holding_policy(lowest_tier=0), features, health).outcome.startswith("refused (not_permitted)")
