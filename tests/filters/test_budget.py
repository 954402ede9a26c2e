"""Tenants' budgets in decide (T4): over budget → refused with a Retry-After in the client's
dialect, or sent to the ladder's cheapest permitted rung, by the tenant's policy."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from extproc.core import Failure, Spent
from extproc.core.names import REASON
from extproc.policy import parse_policy
from extproc.routing.explain import explain, features_for
from tests.builders import OTHER_KEY, immediate_headers, make_sidecar, policy_data, sample
from tests.filters.test_decide import ANTHROPIC_PATH, decide, decision_of

T0 = 1_767_225_600.0


def budget_policy(**budget: Any) -> Any:
    data = policy_data(tenants={"acme": {"budget": {"max_cost": 1.0, **budget}}})
    data["providers"]["primary"]["cost_per_1k"] = {"input": 5, "output": 15}
    data["providers"]["secondary"]["cost_per_1k"] = {"input": 3, "output": 15}
    data["providers"]["small"]["cost_per_1k"] = {"input": 0.1, "output": 0.2}
    return parse_policy(data)


def spent(sidecar: Any, cost: float) -> None:
    sidecar.spend.record("acme", 100, cost, sidecar.clock.wall())


def test_a_tenant_within_budget_is_routed_as_usual() -> None:
    sidecar = make_sidecar(budget_policy())
    spent(sidecar, 0.5)
    _, response = decide(sidecar, model="gpt-4o")
    assert decision_of(response).rungs == (0, 1, 2)


def test_a_tenant_over_budget_is_refused_with_429_and_when_to_come_back_in_its_dialect() -> None:
    sidecar = make_sidecar(budget_policy())
    spent(sidecar, 1.0)
    _, response = decide(sidecar, ANTHROPIC_PATH, model="claude-x")
    assert response.immediate_response.status.code == 429
    headers = immediate_headers(response)
    assert headers[REASON] == Failure.BUDGET_EXCEEDED.value
    assert 0 < int(headers["retry-after"]) <= 3600 and headers["x-should-retry"] == "false"
    body = json.loads(response.immediate_response.body)
    assert body["type"] == "error" and "cost budget (1 of 1)" in body["error"]["message"]
    assert sample(sidecar, "rungway_budget_reached_total", tenant="acme", reason="cost", action="refuse") == 1
    other = decide(sidecar, extra={"authorization": f"Bearer {OTHER_KEY}"}, model="gpt-4o")[1]
    assert other.WhichOneof("response") != "immediate_response"  # another tenant's budget is its own


def test_over_budget_with_cheaper_serves_only_the_cheapest_permitted_rung_flagged() -> None:
    sidecar = make_sidecar(budget_policy(over="cheaper"))
    spent(sidecar, 2.0)
    _, response = decide(sidecar, model="gpt-4o")
    decision = decision_of(response)
    assert decision.rungs == (2,) and decision.skip is Failure.BUDGET_EXCEEDED
    assert sample(sidecar, "rungway_budget_reached_total", tenant="acme", reason="cost", action="cheaper") == 1
    policy = budget_policy(over="cheaper")
    f = features_for(policy, tenant="acme", task="default", model="gpt-4o", stream=False, tools=False)
    verdicts = explain(policy, replace(f, cheapest_only=True)).rungs
    assert [v.serves for v in verdicts] == [False, False, True]
    assert verdicts[0].reason.startswith("over budget")


def test_another_replicas_spend_counts_through_the_bus() -> None:
    sidecar = make_sidecar(budget_policy())
    sidecar._on_event({**Spent("acme", sidecar.clock.wall(), 500, 1.5).encode(), "origin": "another-pod"})
    _, response = decide(sidecar, model="gpt-4o")
    assert response.immediate_response.status.code == 429
