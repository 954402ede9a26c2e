"""Scoring a drill (D1): the trace, not only the answer.

Each (scenario, task, tenant) cell gets named checks. A check passes, fails, or does not apply
(None): properties of an answer do not apply to a correct refusal, cost does not apply when the
answer carried no usage. A cell passes when no check fails; a drill is a regression when a cell
fails, or when a cell that passed in a baseline run no longer does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..policy import Policy
from ..policy.json_schema import compiled
from .golden import GoldenTask
from .scenario import Case, Rung
from .trace import Trace

CHECKS: Final = (
    "rung",
    "answer",
    "properties",
    "schema",
    "tools",
    "citation",
    "degraded",
    "attempts",
    "cost",
    "latency",
)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool | None  # None: does not apply
    detail: str


@dataclass(frozen=True, slots=True)
class Cell:
    scenario: str
    task: str
    tenant: str
    expected: str  # "tier N provider/model" or "refusal"
    checks: tuple[Check, ...]
    trace: Trace
    cost_usd: float | None
    latency_limit_s: float

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.task}/{self.tenant}"

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.passed is False)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "task": self.task,
            "tenant": self.tenant,
            "expected": self.expected,
            "passed": self.passed,
            "cost_usd": self.cost_usd,
            "checks": {c.name: {"passed": c.passed, "detail": c.detail} for c in self.checks},
            "trace": self.trace.to_json(),
        }


def describe(rung: Rung | None) -> str:
    return "refusal" if rung is None else f"tier {rung.tier} {rung.endpoint}"


def served_rung(case: Case, trace: Trace) -> Rung | None:
    """The ladder rung that served, by the x-rungway-served-by endpoint (first match)."""
    return next((r for r in case.ladder if r.endpoint == trace.served_by), None)


def cost_of(policy: Policy, trace: Trace) -> float | None:
    """The answer's cost at its serving provider's prices, when its usage says enough."""
    served = trace.served_by or ""
    provider = policy.providers.get(served.partition("/")[0])
    answer = trace.answer
    if provider is None or answer.output_tokens is None:
        return None
    price = provider.cost_per_1k
    return ((answer.input_tokens or 0) * price.input + answer.output_tokens * price.output) / 1000


def score(case: Case, trace: Trace, policy: Policy) -> Cell:
    task = case.task
    served = served_rung(case, trace) if trace.status < 300 else None
    refused = trace.status >= 400
    cost = cost_of(policy, trace) if not refused else None
    checks = (
        _rung(case, trace, served),
        _answer(task, trace, refused),
        _properties(task, trace) if not refused else Check("properties", None, "refused"),
        _schema(task, trace) if not refused else Check("schema", None, "refused"),
        _tools(task, trace) if not refused else Check("tools", None, "refused"),
        _citation(task, trace) if not refused else Check("citation", None, "refused"),
        _degraded(task, trace, served) if not refused else Check("degraded", None, "refused"),
        _limit("attempts", trace.attempts, task.limits.attempts, "{:d}"),
        _limit("cost", cost, task.limits.cost_usd, "${:.6f}"),
        _limit("latency", trace.latency_s, task.limits.latency_s, "{:.2f}s"),
    )
    return Cell(
        case.scenario, task.id, trace.tenant, describe(case.expected), checks, trace, cost, task.limits.latency_s
    )


def _rung(case: Case, trace: Trace, served: Rung | None) -> Check:
    want = case.expected
    if want is None:
        honest = trace.status >= 400 and trace.served_by is not None and bool(trace.error)
        return Check("rung", honest, f"HTTP {trace.status} from {trace.served_by}; expected an honest refusal")
    if trace.status >= 300:
        return Check("rung", False, f"HTTP {trace.status}: {trace.error[:80]}; expected {describe(want)}")
    got = describe(served) if served is not None else f"unknown endpoint {trace.served_by!r}"
    tier_ok = served is not None and served.index == want.index and trace.tier == want.tier
    return Check("rung", tier_ok, f"{got} (header tier {trace.tier}); expected {describe(want)}")


def _answer(task: GoldenTask, trace: Trace, refused: bool) -> Check:
    if refused:
        return Check("answer", None, f"refused: {trace.error[:80]}")
    answer = trace.answer
    if answer.problem is not None:
        return Check("answer", False, answer.problem)
    if task.forbid.empty_answer and not answer.text.strip() and not answer.tool_calls:
        return Check("answer", False, "empty answer")
    return Check("answer", True, f"{len(answer.text)} chars, {len(answer.tool_calls)} tool calls")


def _properties(task: GoldenTask, trace: Trace) -> Check:
    text = trace.answer.text
    missing = [c for c in task.expect.contains if c not in text]
    if missing:
        return Check("properties", False, f"missing {missing!r}")
    regex = task.expect.regex
    if regex is not None and re.search(regex, text) is None:
        return Check("properties", False, f"no match for /{regex}/ in {text[:60]!r}")
    if not task.expect.contains and regex is None:
        return Check("properties", None, "none set")
    return Check("properties", True, "all hold")


def _schema(task: GoldenTask, trace: Trace) -> Check:
    schema = task.expect.json_schema
    if schema is None:
        return Check("schema", None, "no schema")
    try:
        value = json.loads(trace.answer.text)
    except ValueError:
        return Check("schema", False, "the answer is not JSON")
    validator = compiled(schema)
    error = next(iter(validator.iter_errors(value)), None) if validator is not None else None
    if error is not None:
        return Check("schema", False, f"breaks the schema: {error.message[:80]}")
    return Check("schema", True, "valid")


def _tools(task: GoldenTask, trace: Trace) -> Check:
    called = [name for name, _ in trace.answer.tool_calls]
    banned = sorted(set(called) & set(task.forbid.tools))
    if banned:
        return Check("tools", False, f"called forbidden {banned!r}")
    want = task.expect.tool_call
    if want is None:
        return Check("tools", None if not called else True, f"called {called!r}" if called else "none expected")
    args = next((a for name, a in trace.answer.tool_calls if name == want), None)
    if want not in called:
        return Check("tools", False, f"expected a call to {want!r}, got {called!r}")
    if not isinstance(args, dict):
        return Check("tools", False, f"{want!r} called without JSON-object arguments")
    return Check("tools", True, f"called {want!r}")


def _citation(task: GoldenTask, trace: Trace) -> Check:
    rule = task.citation
    if rule is None:
        return Check("citation", None, "no rule")
    found = len(re.findall(rule.pattern, trace.answer.text))
    return Check("citation", found >= rule.min, f"{found} citations, {rule.min} required")


def _degraded(task: GoldenTask, trace: Trace, served: Rung | None) -> Check:
    flag = trace.degraded
    if flag is None:
        return Check("degraded", False, "no x-rungway-degraded flag")
    if served is not None and served.index != 0 and not flag:
        return Check("degraded", False, f"served by rung {served.index} but not flagged degraded")
    if flag and not task.degraded_ok:
        return Check("degraded", False, "a degraded answer, which the task does not accept")
    return Check("degraded", True, "degraded" if flag else "not degraded")


def _limit(name: str, value: float | None, limit: float, fmt: str) -> Check:
    if value is None:
        return Check(name, None, "not reported")
    shown = fmt.format(value)
    return Check(name, value <= limit, f"{shown} of {fmt.format(limit)}")


@dataclass(frozen=True, slots=True)
class Regression:
    key: str
    why: str


def regressions(cells: Sequence[Cell], baseline: Mapping[str, Any] | None = None) -> tuple[Regression, ...]:
    """Cells that fail their golden expectations, and cells that passed in `baseline` (a previous
    drill's results JSON) but are missing now. With a baseline, a cell failing only checks it
    already failed there is a known failure (a ratchet), not a regression."""
    known: dict[str, set[str]] = {}
    old_cells = baseline_cells(baseline) if baseline is not None else ()
    for old in old_cells:
        if old.get("passed") is False:
            known[_key(old)] = {name for name, c in old.get("checks", {}).items() if c.get("passed") is False}
    found = [
        Regression(c.key, "; ".join(f"{f.name}: {f.detail}" for f in c.failures))
        for c in cells
        if not c.passed and not {f.name for f in c.failures} <= known.get(c.key, set())
    ]
    now = {c.key for c in cells}
    found.extend(
        Regression(_key(old), "passed in the baseline, missing now")
        for old in old_cells
        if old.get("passed") is True and _key(old) not in now
    )
    return tuple(found)


def _key(cell: Mapping[str, Any]) -> str:
    return f"{cell.get('scenario')}/{cell.get('task')}/{cell.get('tenant')}"


def baseline_cells(results: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    cells = results.get("cells")
    if (
        results.get("drill") != RESULTS_VERSION
        or not isinstance(cells, list)
        or not all(isinstance(c, dict) for c in cells)
    ):
        raise ValueError(f"a baseline must be a drill's results JSON (drill: {RESULTS_VERSION}), but was not")
    return cells


RESULTS_VERSION: Final = 1


def results_json(cells: Sequence[Cell], policy_version: str, found: Sequence[Regression]) -> dict[str, Any]:
    return {
        "drill": RESULTS_VERSION,
        "policy_version": policy_version,
        "passed": sum(c.passed for c in cells),
        "failed": sum(not c.passed for c in cells),
        "regressions": [{"key": r.key, "why": r.why} for r in found],
        "cells": [c.to_json() for c in cells],
    }
