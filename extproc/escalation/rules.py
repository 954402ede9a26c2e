"""When an answer is suspended for a person: the tenant's rule (policy `escalate:`) read
against what the try learned."""

from __future__ import annotations

from dataclasses import dataclass

from ..core import Impact
from ..policy import Policy
from ..policy.schema import EscalationRule

# Most important first: a rule's `impact` covers itself and everything above it.
_ORDER = (Impact.REVENUE_CRITICAL, Impact.CUSTOMER_FACING, Impact.ASYNC_ACCEPTABLE, Impact.DEFERRABLE)


def at_least(impact: Impact, floor: Impact) -> bool:
    """Does `impact` matter at least as much as `floor`?"""
    return _ORDER.index(impact) <= _ORDER.index(floor)


def armed(
    policy: Policy, tenant: str, task: str, impact: Impact, *, stream: bool, probe: bool, reviewed: bool
) -> EscalationRule | None:
    """The rule that may suspend this request's answer, or None. Streams are never escalated
    (their client has the answer's first bytes before it is judged whole), nor probes, nor a
    replay a person already decided on; the policy needs a webhook and a store for it."""
    if stream or probe or reviewed or policy.escalation is None or policy.deferral is None:
        return None
    rule = policy.tenant(tenant).escalation_for(task)
    return rule if rule is not None and at_least(impact, rule.impact) else None


def hands_off(policy: Policy, task: str, *, stream: bool, probe: bool, reviewed: bool) -> bool:
    """Does this request's task class hand an outage to a person (T6 tier 3, `when_exhausted:
    {tier: 3}`), with a desk to hand it to (escalation and an SQLite deferral store)? Then its
    tries keep its body, and the handoff suspends it for a person instead of the notice."""
    if stream or probe or reviewed or policy.escalation is None:
        return False
    if policy.deferral is None or policy.deferral.store is None:
        return False
    exhausted = policy.task_class(task).when_exhausted
    return exhausted is not None and exhausted.tier == 3


@dataclass(frozen=True, slots=True)
class Signals:
    """What a try knows when it judges an answer."""

    impact: Impact
    tier: int  # the serving rung's
    score: float | None  # the ladder's primary's health score (1.0 healthy); None: not known
    contract_failed: bool  # the answer broke the task's contract and no rung is left to try
    mean_logprob: float | None  # None: the provider returned no logprobs


def triggers(rule: EscalationRule, signals: Signals) -> tuple[str, ...]:
    """The configured signals that fired, in a fixed order; empty when the answer stands.
    `require: all` fires only when every configured signal does."""
    if not at_least(signals.impact, rule.impact):
        return ()
    checks: list[tuple[str, bool]] = []
    if rule.tier is not None:
        checks.append(("tier", signals.tier >= rule.tier))
    if rule.score_below is not None:
        checks.append(("score", signals.score is not None and signals.score < rule.score_below))
    if rule.contract:
        checks.append(("contract", signals.contract_failed))
    if rule.min_logprob is not None:
        low = signals.mean_logprob is not None and signals.mean_logprob < rule.min_logprob
        checks.append(("logprob", low))
    fired = tuple(name for name, hit in checks if hit)
    if rule.require == "all" and len(fired) < len(checks):
        return ()
    return fired
