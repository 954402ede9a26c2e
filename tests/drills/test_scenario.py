from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Failure
from extproc.demo.mock_provider import parse_mode
from extproc.drills import SCENARIOS, Fault, Scenario, expected_rung, mock_mode, plan_case
from extproc.drills.scenario import failure_mode
from extproc.policy import Policy

from .conftest import golden

TASKS = ("chat", "json-schema", "tool-call", "stream", "anthropic-client", "clinic-summary")


def test_the_drill_covers_the_five_faults_through_every_rung(policy: Policy) -> None:
    names = {s.name for s in SCENARIOS}
    assert {"primary_timeout", "rate_limit_storm", "schema_drift", "tool_incompatible", "quality_drop"} <= names
    faulted = {rung for s in SCENARIOS for rung, _ in s.faults}
    assert faulted == {0, 1}  # and the last rung serves what the others cannot
    assert next(s for s in SCENARIOS if s.name == "rate_limit_storm").tenants > 1


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("task", TASKS)
def test_every_staged_fault_is_a_mode_the_mock_understands(policy: Policy, scenario: Scenario, task: str) -> None:
    case = plan_case(policy, golden(task), scenario)
    for _, mode in case.modes:
        parse_mode(mode)
    assert set(case.headers(policy.task_header)) >= {f"x-mock-mode-{p}" for p in policy.providers}


def test_a_timeout_outlasts_the_rungs_own_timeout() -> None:
    assert mock_mode(Fault.TIMEOUT, golden("chat"), 1.0) == "delay:3"


def test_a_quality_drop_is_a_short_answer_unless_the_proxy_could_not_see_it_in_time() -> None:
    assert mock_mode(Fault.QUALITY_DROP, golden("chat"), 1) == "tokens:2"
    assert mock_mode(Fault.QUALITY_DROP, golden("stream"), 1) == "empty"
    assert mock_mode(Fault.QUALITY_DROP, golden("tool-call"), 1) == "empty"


@pytest.mark.parametrize(
    ("scenario", "task", "want"),
    [
        ("baseline", "chat", 0),
        ("primary_timeout", "chat", 1),
        ("schema_drift", "json-schema", 2),
        ("tool_incompatible", "chat", 2),
        ("tool_incompatible", "tool-call", None),  # the small model has no tools: refuse
        ("primary_timeout", "clinic-summary", None),  # the clinic never gets a fallback
        ("baseline", "clinic-summary", 0),
    ],
)
def test_the_expected_rung_follows_the_faults_the_tiers_and_the_capabilities(
    policy: Policy, scenario: str, task: str, want: int | None
) -> None:
    case = plan_case(policy, golden(task), next(s for s in SCENARIOS if s.name == scenario))
    assert (case.expected.index if case.expected else None) == want


def test_the_storm_sends_as_several_tenants_but_a_tenants_own_rule_alone(policy: Policy) -> None:
    storm = next(s for s in SCENARIOS if s.name == "rate_limit_storm")
    assert plan_case(policy, golden("chat"), storm).tenants == ("app", "storm-b", "storm-c")
    assert plan_case(policy, golden("clinic-summary"), storm).tenants == ("clinic",)


@given(faulted=st.frozensets(st.integers(0, 2)), task=st.sampled_from(TASKS))
def test_the_expected_rung_is_never_faulted_nor_beyond_the_tasks_tier(
    policy: Policy, faulted: frozenset[int], task: str
) -> None:
    spec = golden(task)
    rung = expected_rung(policy, spec, faulted, spec.tenant)
    if rung is None:
        return
    assert rung.index not in faulted and rung.tier <= spec.max_tier
    # and nothing before it could have served
    assert all(
        r in faulted or expected_rung(policy, spec, faulted | {r}, spec.tenant) == rung for r in range(rung.index)
    )


def test_a_scenario_needs_a_sane_number_of_tenants() -> None:
    with pytest.raises(ValueError, match="tenants must be in"):
        Scenario("x", "x", (), tenants=9)


@pytest.mark.parametrize(
    "failure", [Failure.TIMEOUT, Failure.RATE_LIMITED, Failure.SCHEMA_ERROR, Failure.TOOL_MISMATCH]
)
def test_an_incidents_failure_becomes_a_mode_the_mock_understands(failure: Failure) -> None:
    parse_mode(failure_mode(failure, 1.0))


def test_a_failure_a_mock_cannot_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="failure must be one of"):
        failure_mode(Failure.UNAUTHENTICATED, 1.0)
