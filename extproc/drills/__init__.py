"""Drills (D1, D3): golden tasks, scripted faults through every rung of a ladder, scoring the
trace (rung, tier, degraded flag, schema, tools, attempts, cost, latency), the report and its
chart, and regression fixtures. Pure: the runner that sends the requests is runtime/drill.py.
May import: core, policy, translate.
"""

from extproc.drills.fixture import (
    Fixture,
    FixtureError,
    fixture_from_cell,
    fixture_from_incident,
    parse_fixture,
    replay_case,
)
from extproc.drills.golden import GoldenTask, GoldenTaskError, parse_task
from extproc.drills.report import render_markdown, render_svg
from extproc.drills.scenario import SCENARIOS, Case, Fault, Rung, Scenario, expected_rung, mock_mode, plan_case
from extproc.drills.score import Cell, Check, Regression, baseline_cells, regressions, results_json, score
from extproc.drills.trace import Answer, Trace, error_message, read_answer, rungway_flags

__all__ = [
    "SCENARIOS",
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
