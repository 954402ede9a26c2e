from __future__ import annotations

import json

import pytest

import extproc.drills
from extproc.drills import GoldenTaskError, parse_task

from .conftest import EVALS, golden

CHAT = {
    "id": "chat",
    "dialect": "openai",
    "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    "limits": {"latency_s": 5, "cost_usd": 0.01},
}


def test_every_shipped_golden_task_parses_and_the_set_covers_each_kind() -> None:
    tasks = [parse_task(p.read_text(), str(p)) for p in sorted(EVALS.glob("*.json"))]
    assert len(tasks) >= 5
    assert {t.answer_kind for t in tasks} == {"text", "json", "tool"}
    assert any(t.stream for t in tasks)
    assert any(t.dialect == "anthropic" for t in tasks)
    assert any(not t.degraded_ok for t in tasks) and any(t.citation for t in tasks)


def test_a_task_that_forbids_degraded_answers_may_only_be_served_by_tier_0() -> None:
    assert golden("clinic-summary").max_tier == 0
    assert golden("chat").max_tier == 3
    below = parse_task(json.dumps({**CHAT, "forbid": {"below_tier": 1}}), "t.json")
    assert below.max_tier == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "Bad Id"}, "id"),
        ({"dialect": "gemini"}, "dialect"),
        ({"request": {"messages": []}}, "request.model must be a non-empty string"),
        ({"expect": {"regex": "("}}, "regex must compile"),
        ({"expect": {"json_schema": {"type": 3}}}, "json_schema is not a valid JSON Schema"),
        ({"expect": {"tool_call": "get_weather"}}, "the request offers no tools"),
        ({"limits": {"latency_s": 0, "cost_usd": 1}}, "limits.latency_s"),
        ({"surprise": True}, "surprise"),
        ({"citation": {"pattern": "["}}, "citation pattern must compile"),
    ],
)
def test_a_bad_task_is_refused_naming_the_file_and_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(GoldenTaskError) as info:
        parse_task(json.dumps({**CHAT, **change}), "evals/failover/bad.json")
    assert str(info.value).startswith("evals/failover/bad.json: ")
    assert message in str(info.value)


def test_a_task_that_is_not_json_is_refused() -> None:
    with pytest.raises(GoldenTaskError, match=r"t\.json: not JSON"):
        parse_task("{", "t.json")


def test_drills_exports_exactly_its_public_names() -> None:
    assert sorted(extproc.drills.__all__) == [
        "Answer",
        "Case",
        "Cell",
        "Check",
        "Fault",
        "Fixture",
        "FixtureError",
        "GoldenTask",
        "GoldenTaskError",
        "Regression",
        "Rung",
        "SCENARIOS",
        "Scenario",
        "Trace",
        "baseline_cells",
        "error_message",
        "expected_rung",
        "fixture_from_cell",
        "fixture_from_incident",
        "mock_mode",
        "parse_fixture",
        "parse_task",
        "plan_case",
        "read_answer",
        "regressions",
        "render_markdown",
        "render_svg",
        "replay_case",
        "results_json",
        "rungway_flags",
        "score",
    ]
    for name in extproc.drills.__all__:
        assert getattr(extproc.drills, name) is not None
