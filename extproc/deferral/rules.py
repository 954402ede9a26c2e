"""Which requests are deferred, and when a deferred one may be replayed: the ladder choice
(routing.choose) under the same rules, read the other way round."""

from __future__ import annotations

import json

from ..core import DeferredTask, Impact
from ..policy import Policy
from ..routing import HealthView, NeedBody, Refusal, RequestFeatures, Route, choose


def may_wait(policy: Policy, features: RequestFeatures) -> bool:
    """Does the policy let this request wait for later: its task class, or its impact class, is
    deferrable, the policy has a deferral queue, and it is not a stream (its client is waiting
    for events, not a task id)?"""
    if policy.deferral is None or features.stream:
        return False
    return policy.tasks[features.task].deferrable or features.impact is Impact.DEFERRABLE


def deferrable(policy: Policy, features: RequestFeatures, result: Route | Refusal | NeedBody) -> bool:
    """A request that may wait and that no permitted rung can serve now: every permitted rung is
    down (routed anyway, or refused as not permitted because the permitted ones are down).
    Never a request the rules alone refuse (it will never be served)."""
    if not may_wait(policy, features):
        return False
    if isinstance(result, Route):
        return result.unwell
    return isinstance(result, Refusal) and result.transient


def servable(policy: Policy, task: DeferredTask, health: HealthView | None) -> bool:
    """May the task be replayed now: does a permitted rung look healthy for it?"""
    try:
        body = json.loads(task.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return True  # replayed to get its client the honest 400
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    features = RequestFeatures(
        dialect=task.dialect,
        model=task.model,
        stream=False,
        json_mode=kind in ("json_object", "json_schema"),
        max_tokens=max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
        body_bytes=len(task.body),
        tenant=task.tenant,
        task=task.task if task.task in policy.tasks else policy.default_task,
        impact=task.impact,
        has_tools=bool(body.get("tools")),
    )
    result = choose(policy, features, health)
    if isinstance(result, Route):
        return not result.unwell
    return isinstance(result, Refusal) and not result.transient  # replayed to get its refusal
