"""Which requests are deferred, and when a deferred one may be replayed (the ladder choice's
rules, read both ways)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from extproc.core import DeferredTask, Dialect, Failure, Impact
from extproc.deferral import deferrable, servable
from extproc.policy import Policy
from extproc.routing import choose
from extproc.routing.explain import features_for
from tests.builders import make_policy, policy_data

PRIMARY_DOWN: Any = lambda key, first: Failure.SERVER_ERROR if key.startswith("primary") else None  # noqa: E731
ALL_DOWN: Any = lambda key, first: Failure.SERVER_ERROR  # noqa: E731


def deferral_policy(**overrides: Any) -> Policy:
    tasks = {**policy_data()["tasks"], "batch": {"deferrable": True}}
    return make_policy(
        tasks=tasks,
        tenants={"hospital": {"lowest_tier": 0}, "bank": {"regions": ["nowhere"]}},
        deferral={"store": "tasks.db"},
        **overrides,
    )


def features(policy: Policy, tenant: str = "hospital", task: str = "batch", stream: bool = False) -> Any:
    return features_for(policy, tenant=tenant, task=task, model="gpt-4o", stream=stream, tools=False)


def test_a_deferrable_task_is_deferred_when_its_only_permitted_rung_is_down() -> None:
    policy = deferral_policy()
    f = features(policy)
    assert deferrable(policy, f, choose(policy, f, PRIMARY_DOWN))
    assert not deferrable(policy, f, choose(policy, f, None))  # healthy: served now


def test_every_rung_down_defers_a_tenant_without_tier_rules_too() -> None:
    policy = deferral_policy()
    f = features(policy, tenant="agency")
    assert not deferrable(policy, f, choose(policy, f, PRIMARY_DOWN))  # a fallback serves it
    assert deferrable(policy, f, choose(policy, f, ALL_DOWN))


def test_the_deferrable_impact_class_defers_any_task() -> None:
    policy = deferral_policy()
    f = replace(features(policy, task="default"), impact=Impact.DEFERRABLE)
    assert deferrable(policy, f, choose(policy, f, PRIMARY_DOWN))
    f = replace(f, impact=Impact.CUSTOMER_FACING)
    assert not deferrable(policy, f, choose(policy, f, PRIMARY_DOWN))


def test_streams_rule_refusals_and_policies_without_a_queue_are_never_deferred() -> None:
    policy = deferral_policy()
    stream = features(policy, stream=True)
    assert not deferrable(policy, stream, choose(policy, stream, PRIMARY_DOWN))
    # Residency rules out every rung whatever their health: it would never be served.
    bank = features(policy, tenant="bank")
    assert not deferrable(policy, bank, choose(policy, bank, PRIMARY_DOWN))
    without = make_policy(tasks={**policy_data()["tasks"], "batch": {"deferrable": True}})
    f = features(without)
    assert not deferrable(without, f, choose(without, f, ALL_DOWN))


def stored(tenant: str = "hospital", **body: Any) -> DeferredTask:
    payload = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **body}).encode()
    return DeferredTask("task_1", tenant, "batch", Impact.DEFERRABLE, Dialect.OPENAI, "/v1/chat/completions",
                        "gpt-4o", (), payload, 0.0)  # fmt: skip


def test_a_task_is_replayed_only_once_a_permitted_rung_is_healthy() -> None:
    policy = deferral_policy()
    assert not servable(policy, stored(), PRIMARY_DOWN)
    assert servable(policy, stored(), None)
    assert servable(policy, stored("agency"), PRIMARY_DOWN)  # its fallback is up


def test_a_task_the_rules_refuse_outright_is_replayed_for_its_honest_answer() -> None:
    policy = deferral_policy()
    assert servable(policy, stored("bank"), ALL_DOWN)
    broken = replace(stored(), body=b"not json")
    assert servable(policy, broken, ALL_DOWN)
