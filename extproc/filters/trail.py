"""The audit entries the filters return (as `Audited` effects): a request's context from its
Decision (tenant, task, policy version, request id, prompt hash), and rungs as records name them."""

from __future__ import annotations

from ..audit import Entry, Kind, RungRef
from ..core import Decision
from ..policy import Policy
from .effects import Audited


def rung_ref(policy: Policy, ladder: str, index: int, requested_model: str) -> RungRef:
    rung = policy.ladders[ladder][index]
    return RungRef(ladder, index, rung.provider, rung.model_for(requested_model), policy.tier_of(ladder, index))


def audited(
    policy: Policy,
    decision: Decision,
    kind: Kind,
    at: float,
    trigger: str,
    *,
    source: int | None = None,
    target: int | None = None,
    tokens: int | None = None,
    detail: dict[str, str | int | float | bool] | None = None,
) -> Audited:
    """An entry about a routed request; `source` and `target` are rung indexes of its ladder."""
    ladder, model = decision.ladder, decision.model
    cost = None
    if tokens is not None and target is not None:
        provider = policy.providers[policy.ladders[ladder][target].provider]
        cost = tokens / 1000 * provider.cost_per_1k.output
    return Audited(
        Entry(
            at=at,
            kind=kind,
            tenant=decision.tenant,
            task=decision.task,
            trigger=trigger,
            source=rung_ref(policy, ladder, source, model) if source is not None else None,
            target=rung_ref(policy, ladder, target, model) if target is not None else None,
            policy=decision.policy,
            request_id=decision.request_id or "",
            prompt_hash=decision.prompt_hash or "",
            tokens=tokens,
            cost=cost,
            detail=detail or {},
        )
    )
