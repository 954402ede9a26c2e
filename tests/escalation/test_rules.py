"""When an answer is held for a person: a tenant's rule read against the try's signals, and an
escalation's lifecycle (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from extproc.core import Impact, Review
from extproc.escalation import (
    EscalationState,
    IllegalEscalationError,
    Signals,
    armed,
    at_least,
    resolved_state,
    transition,
    triggers,
)
from extproc.escalation.lifecycle import TRANSITIONS
from extproc.policy import EscalationRule, Policy, PolicyError
from tests.builders import make_policy

IMPACTS = list(Impact)


def escalation_policy(**tenant_rules: Any) -> Policy:
    return make_policy(
        tenants={"bank": tenant_rules},
        deferral={"store": "tasks.db"},
        escalation={"webhook_url": "https://oncall.test/hook", "secret": {"env": "RW_UNIT_ESCALATION"}},
    )


def signals(
    impact: Impact = Impact.REVENUE_CRITICAL,
    tier: int = 0,
    score: float | None = None,
    contract_failed: bool = False,
    mean_logprob: float | None = None,
) -> Signals:
    return Signals(impact, tier, score, contract_failed, mean_logprob)


def test_a_fallback_tier_holds_a_revenue_critical_answer() -> None:
    rule = EscalationRule(tier=1)
    assert triggers(rule, signals(tier=1)) == ("tier",)
    assert triggers(rule, signals(tier=0)) == ()
    assert triggers(rule, signals(tier=2, impact=Impact.CUSTOMER_FACING)) == ()  # below the rule's impact


def test_each_signal_fires_on_its_own_threshold() -> None:
    rule = EscalationRule(impact=Impact.ASYNC_ACCEPTABLE, score_below=0.5, contract=True, min_logprob=-1.0)
    assert triggers(rule, signals(score=0.4)) == ("score",)
    assert triggers(rule, signals(score=0.5)) == ()
    assert triggers(rule, signals(score=None)) == ()  # an unknown score says nothing
    assert triggers(rule, signals(contract_failed=True)) == ("contract",)
    assert triggers(rule, signals(mean_logprob=-1.5)) == ("logprob",)
    assert triggers(rule, signals(mean_logprob=-0.2)) == ()
    assert triggers(rule, signals(mean_logprob=None)) == ()  # no logprobs returned
    assert triggers(rule, signals(score=0.1, mean_logprob=-3.0)) == ("score", "logprob")


def test_require_all_holds_only_when_every_configured_signal_fires() -> None:
    rule = EscalationRule(tier=1, min_logprob=-1.0, require="all")
    assert triggers(rule, signals(tier=2)) == ()
    assert triggers(rule, signals(mean_logprob=-2.0)) == ()
    assert triggers(rule, signals(tier=2, mean_logprob=-2.0)) == ("tier", "logprob")


@given(
    st.sampled_from(IMPACTS),
    st.sampled_from(IMPACTS),
    st.integers(0, 3),
    st.one_of(st.none(), st.floats(0, 1)),
    st.booleans(),
    st.one_of(st.none(), st.floats(-20, 0)),
    st.sampled_from(["any", "all"]),
)
def test_triggers_never_fire_below_the_rules_impact_and_name_only_configured_signals(
    floor: Impact,
    impact: Impact,
    tier: int,
    score: float | None,
    contract: bool,
    logprob: float | None,
    require: Any,
) -> None:
    rule = EscalationRule(impact=floor, tier=2, score_below=0.5, require=require)
    fired = triggers(rule, signals(impact, tier, score, contract, logprob))
    if not at_least(impact, floor):
        assert fired == ()
    assert set(fired) <= {"tier", "score"}  # contract and logprob are not in this rule
    if require == "all" and fired:
        assert fired == ("tier", "score")


def test_at_least_orders_impacts_most_important_first() -> None:
    assert at_least(Impact.REVENUE_CRITICAL, Impact.CUSTOMER_FACING)
    assert at_least(Impact.CUSTOMER_FACING, Impact.CUSTOMER_FACING)
    assert not at_least(Impact.DEFERRABLE, Impact.ASYNC_ACCEPTABLE)


def test_streams_probes_reviewed_replays_and_lesser_impacts_are_never_armed() -> None:
    policy = escalation_policy(escalate={"impact": "customer_facing", "tier": 1})
    arm = {"stream": False, "probe": False, "reviewed": False}
    assert armed(policy, "bank", "default", Impact.REVENUE_CRITICAL, **arm) is not None
    assert armed(policy, "bank", "default", Impact.ASYNC_ACCEPTABLE, **arm) is None
    assert armed(policy, "agency", "default", Impact.REVENUE_CRITICAL, **arm) is None  # no rule of its own
    for flag in arm:
        assert armed(policy, "bank", "default", Impact.REVENUE_CRITICAL, **{**arm, flag: True}) is None


def test_a_task_class_rule_wins_over_the_tenants() -> None:
    policy = escalation_policy(
        escalate={"tier": 1}, tasks={"summarizer": {"escalate": {"impact": "deferrable", "contract": True}}}
    )
    arm = {"stream": False, "probe": False, "reviewed": False}
    rule = armed(policy, "bank", "summarizer", Impact.DEFERRABLE, **arm)
    assert rule is not None and rule.contract and rule.tier is None
    assert armed(policy, "bank", "default", Impact.DEFERRABLE, **arm) is None


def test_a_rule_needs_a_signal_a_webhook_and_a_store() -> None:
    with pytest.raises(ValidationError, match="needs a signal"):
        EscalationRule()
    with pytest.raises(PolicyError, match="set `escalation:`"):
        make_policy(tenants={"bank": {"escalate": {"tier": 1}}}, deferral={"store": "tasks.db"})
    with pytest.raises(PolicyError, match="set `deferral:` too"):
        make_policy(
            tenants={"bank": {"escalate": {"tier": 1}}},
            escalation={"webhook_url": "https://oncall.test/hook", "secret": {"env": "X"}},
        )
    with pytest.raises(PolicyError, match="is not an http"):
        make_policy(escalation={"webhook_url": "ftp://oncall.test", "secret": {"env": "X"}})


def test_an_open_escalation_is_decided_once() -> None:
    for review in Review:
        target = resolved_state(review)
        assert transition(EscalationState.OPEN, target) is target
        with pytest.raises(IllegalEscalationError, match=f"from {target.value}"):
            transition(target, EscalationState.APPROVED)
    assert transition(EscalationState.OPEN, EscalationState.EXPIRED) is EscalationState.EXPIRED


@given(st.sampled_from(list(EscalationState)), st.sampled_from(list(EscalationState)))
def test_only_the_transition_table_moves_an_escalation(source: EscalationState, target: EscalationState) -> None:
    if (source, target) in TRANSITIONS:
        assert transition(source, target) is target
        assert source is EscalationState.OPEN
    else:
        with pytest.raises(IllegalEscalationError):
            transition(source, target)
