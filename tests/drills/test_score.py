from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.drills import SCENARIOS, Answer, Case, Cell, Trace, plan_case, regressions, results_json, score
from extproc.policy import Policy

from .conftest import golden

TEXT = "Hello from anthropic-backup (claude-sonnet-4-5): " + " ".join(f"w{i}" for i in range(1, 13))


def scenario_case(policy: Policy, task: str, scenario: str = "primary_timeout") -> Case:
    return plan_case(policy, golden(task), next(s for s in SCENARIOS if s.name == scenario))


def served(
    case: Case, rung: int, answer: Answer, *, latency: float = 0.5, flags: dict[str, str] | None = None
) -> Trace:
    spec = case.ladder[rung]
    headers = {
        "x-rungway-served-by": spec.endpoint,
        "x-rungway-tier": str(spec.tier),
        "x-rungway-degraded": "true" if rung else "false",
        "x-rungway-attempts": "2",
        **(flags or {}),
    }
    return Trace(200, headers, answer, latency)


def refused(message: str = "no permitted rung") -> Trace:
    flags = {"x-rungway-served-by": "rungway", "x-rungway-tier": "none", "x-rungway-attempts": "1"}
    return Trace(503, flags, Answer(), 0.2, "clinic", message)


def failed(cell: Cell) -> set[str]:
    return {c.name for c in cell.failures}


def test_the_expected_rung_serving_a_good_answer_passes_every_check(policy: Policy) -> None:
    case = scenario_case(policy, "chat")
    cell = score(case, served(case, 1, Answer(TEXT, input_tokens=30, output_tokens=12)), policy)
    assert cell.passed, cell.failures
    assert cell.cost_usd == pytest.approx((30 * 0.003 + 12 * 0.015) / 1000)
    assert {c.name: c.passed for c in cell.checks}["schema"] is None  # no schema set: does not apply


def test_a_wrong_rung_fails_even_when_the_answer_is_good(policy: Policy) -> None:
    case = scenario_case(policy, "chat")
    cell = score(case, served(case, 2, Answer(TEXT)), policy)
    assert failed(cell) == {"rung"}


def test_a_quality_drop_the_proxy_let_through_fails_on_rung_and_properties(policy: Policy) -> None:
    case = scenario_case(policy, "chat", "quality_drop")
    cell = score(case, served(case, 0, Answer("Hello from openai-primary (gpt-4o): w1 w2")), policy)
    assert failed(cell) == {"rung", "properties"}


def test_a_fallback_not_flagged_degraded_fails(policy: Policy) -> None:
    case = scenario_case(policy, "chat")
    cell = score(case, served(case, 1, Answer(TEXT), flags={"x-rungway-degraded": "false"}), policy)
    assert failed(cell) == {"degraded"}


def test_limits_fail_on_latency_attempts_and_cost(policy: Policy) -> None:
    case = scenario_case(policy, "chat")
    answer = Answer(TEXT, input_tokens=10, output_tokens=10**6)
    trace = served(case, 1, answer, latency=99.0, flags={"x-rungway-attempts": "7"})
    assert failed(score(case, trace, policy)) == {"latency", "attempts", "cost"}


def test_json_answers_are_checked_against_the_schema(policy: Policy) -> None:
    case = scenario_case(policy, "json-schema", "schema_drift")
    good = score(case, served(case, 2, Answer(json.dumps({"answer": "x", "provider": "p"}))), policy)
    assert good.passed
    assert failed(score(case, served(case, 2, Answer(json.dumps({"answer": ""}))), policy)) == {"schema"}
    assert failed(score(case, served(case, 2, Answer("not json")), policy)) == {"schema"}


def test_a_tool_task_needs_its_call_and_never_a_forbidden_one(policy: Policy) -> None:
    case = scenario_case(policy, "tool-call")
    assert score(case, served(case, 1, Answer(tool_calls=(("get_weather", {"city": "Paris"}),))), policy).passed
    prose = score(case, served(case, 1, Answer("It is sunny")), policy)
    assert failed(prose) == {"tools"}
    both = Answer(tool_calls=(("get_weather", {"city": "P"}), ("delete_account", {})))
    assert failed(score(case, served(case, 1, both), policy)) == {"tools"}
    no_args = score(case, served(case, 1, Answer(tool_calls=(("get_weather", None),))), policy)
    assert failed(no_args) == {"tools"}


def test_an_empty_answer_fails(policy: Policy) -> None:
    case = scenario_case(policy, "chat", "baseline")
    assert "answer" in failed(score(case, served(case, 0, Answer("")), policy))


def test_the_clinic_gets_an_honest_refusal_and_no_fallback(policy: Policy) -> None:
    case = scenario_case(policy, "clinic-summary")
    cell = score(case, refused(), policy)
    assert cell.passed and cell.expected == "refusal"
    fallback = score(case, served(case, 1, Answer(TEXT)), policy)
    assert {"rung", "degraded"} <= failed(fallback)


def test_a_refusal_without_a_message_or_flags_is_not_honest(policy: Policy) -> None:
    case = scenario_case(policy, "clinic-summary")
    assert failed(score(case, Trace(503, {}, Answer(), 0.1, "clinic", ""), policy)) == {"rung"}


def test_the_citation_rule_counts_citations(policy: Policy) -> None:
    case = scenario_case(policy, "clinic-summary", "baseline")
    assert score(case, served(case, 0, Answer(TEXT)), policy).passed
    assert failed(score(case, served(case, 0, Answer("Hello from x: w1 w2")), policy)) == {"citation"}


def test_a_failing_cell_is_a_regression_unless_the_baseline_already_failed_it_the_same_way(policy: Policy) -> None:
    case = scenario_case(policy, "chat")
    good = score(case, served(case, 1, Answer(TEXT)), policy)
    wrong_rung = score(case, served(case, 2, Answer(TEXT)), policy)
    assert [r.key for r in regressions([wrong_rung])] == ["primary_timeout/chat/app"]
    known = results_json([wrong_rung], "v", ())
    assert regressions([wrong_rung], known) == ()
    worse = score(case, served(case, 2, Answer("")), policy)
    assert len(regressions([worse], known)) == 1  # a new failed check is new
    assert regressions([good], known) == ()


def test_a_cell_that_passed_in_the_baseline_and_is_gone_is_a_regression(policy: Policy) -> None:
    case = scenario_case(policy, "chat")
    baseline = results_json([score(case, served(case, 1, Answer(TEXT)), policy)], "v", ())
    assert [r.why for r in regressions([], baseline)] == ["passed in the baseline, missing now"]


@pytest.mark.parametrize("bad", [{}, {"drill": 2, "cells": []}, {"drill": 1, "cells": [3]}])
def test_a_baseline_that_is_not_a_drills_results_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="a baseline must be a drill's results JSON"):
        regressions([], bad)


@given(
    rung=st.integers(0, 2),
    degraded=st.booleans(),
    text=st.text(max_size=40),
    latency=st.floats(0, 100),
    status=st.sampled_from([200, 429, 502, 503]),
)
def test_any_trace_scores_and_a_run_is_its_own_baseline(
    policy: Policy, rung: int, degraded: bool, text: str, latency: float, status: int
) -> None:
    case = scenario_case(policy, "chat")
    trace = served(case, rung, Answer(text), latency=latency, flags={"x-rungway-degraded": str(degraded).lower()})
    if status != 200:
        trace = Trace(status, trace.flags, trace.answer, latency, "app", "err")
    cell = score(case, trace, policy)
    assert cell.passed == (not cell.failures)
    results = json.loads(json.dumps(results_json([cell], "v", regressions([cell]))))
    assert regressions([cell], results) == ()
    assert results["failed"] == (0 if cell.passed else 1)
