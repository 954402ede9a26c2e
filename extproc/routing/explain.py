"""`rungway policy explain`: for one tenant, task and model, which rung would serve now and why
each other rung is skipped. A query over the same rules `choose` applies (tenant policy,
capabilities, context window, health), in words a platform engineer reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core import Capability, Dialect, Failure, Impact, ToolMode
from ..core.names import endpoint_key
from ..policy import Policy
from .capability import matrix_forbids, refuses_tools, tool_mode_of
from .capacity import Denial, Holder, Ledger, Limits
from .hold import awaits_approval
from .ladder import (
    BYTES_PER_TOKEN,
    NeedBody,
    Refusal,
    RequestFeatures,
    Route,
    choose,
    prompt_tokens_estimate,
    rung_price,
    tenant_forbids,
)


@dataclass(frozen=True, slots=True)
class RungVerdict:
    index: int
    endpoint: str
    tier: int
    serves: bool  # on the route this request would get, in order
    reason: str  # why it is skipped ("" when it serves)
    tool_mode: str = "full"  # what of the request's tools a try here is offered
    # How a try here changes the request: tools removed, context trimmed to the window.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    ladder: str | None
    rungs: tuple[RungVerdict, ...]
    outcome: str  # which rung serves first, or the refusal the client would read


def explain(
    policy: Policy,
    features: RequestFeatures,
    health: Mapping[str, Mapping[str, Any]] | None = None,
    in_flight: Mapping[str, Mapping[str, int]] | None = None,
) -> Explanation:
    """`health`: the board's rows by endpoint (from `/status`), or None to leave health out.
    `in_flight`: requests in flight in the pod by rung ("ladder/index") and tenant (`/status`'s
    `capacity`), or None to leave capacity out."""
    ladder = policy.ladder_for(features.model, features.task)
    if ladder is None:
        return Explanation(None, (), f"refused: no model map entry matches {features.model!r}")
    at_capacity = _capacity_reasons(policy, features, ladder, in_flight) if in_flight is not None else {}
    needed = prompt_tokens_estimate(features.body_bytes) + (features.max_tokens or 0)
    leave_below = getattr(policy.health.leave_below, features.impact.value)

    def unhealthy(key: str, first: bool) -> str | None:
        row = (health or {}).get(key)
        if row is None:
            return None
        state = row.get("circuit", {}).get("state")
        if state == "open":
            return "circuit open"
        score = row.get("score")
        if isinstance(score, int | float) and score < leave_below:
            return f"score {score:g} below {features.impact.value}'s {leave_below:g}"
        return None

    def view(key: str, first: bool) -> Failure | None:
        return Failure.SERVER_ERROR if unhealthy(key, first) else None

    route = choose(policy, features, view if health else None)
    if isinstance(route, Route) and at_capacity:
        # decide drops the rungs without a slot for the request (filters/decide.py).
        kept = tuple(i for i in route.rungs if i not in at_capacity)
        if not kept:
            route = Refusal(
                Failure.RATE_LIMITED, "no rung of the route has capacity for it now (503/429 + Retry-After)"
            )
        else:
            route = Route(route.ladder, kept, route.cluster, route.tries, route.skip_reason)
    serving = route.rungs if isinstance(route, Route) else ()
    cheapest = min((rung_price(policy, ladder, i) for i in serving), default=0.0)
    verdicts: list[RungVerdict] = []
    largest = max(policy.context_window_of(ladder, i) for i in range(len(policy.ladders[ladder])))
    for i, rung in enumerate(policy.ladders[ladder]):
        provider = policy.providers[rung.provider]
        key = endpoint_key(rung.provider, rung.model_for(features.model))
        reason = (
            tenant_forbids(policy, features.tenant, features.task, ladder, i, features.approved_tier)
            or matrix_forbids(policy, features.task, ladder, i, features.model)
            or ""
        )
        if not reason and features.stream and Capability.STREAMING not in provider.capabilities:
            reason = "does not stream"
        if not reason and features.json_mode and Capability.JSON_MODE not in provider.capabilities:
            reason = "no JSON mode"
        window = policy.context_window_of(ladder, i)
        if not reason and needed > window and not policy.context.trim:
            reason = f"context window {window} < {needed} tokens needed"
        if not reason and features.has_tools and refuses_tools(policy, ladder, i):
            reason = "no tool calling"
        if not reason and features.cheapest_only and serving and rung_price(policy, ladder, i) > cheapest:
            reason = f"over budget: only the cheapest permitted rung serves (this one costs {rung_price(policy, ladder, i):g}/1k)"
        if not reason and health:
            reason = unhealthy(key, not verdicts) or ""
        if not reason:
            reason = at_capacity.get(i, "")
        if not reason and i not in serving:
            reason = "not on the route (every permitted rung is unwell: all are tried in order)"
        mode = tool_mode_of(policy, ladder, i)
        notes = _notes(policy, mode, window, needed, largest)
        verdicts.append(
            RungVerdict(i, key, policy.tier_of(ladder, i), i in serving and not reason, reason, mode.value, notes)
        )
    wait = policy.tenant(features.tenant).approval_wait_s
    if isinstance(route, Refusal) and wait is not None and awaits_approval(policy, features, route):
        outcome = (
            f"held up to {wait:g} s for an operator's approval, then refused ({route.failure.value}): {route.message}"
        )
    elif isinstance(route, Refusal):
        outcome = f"refused ({route.failure.value}): {route.message}"
    elif isinstance(route, NeedBody):
        outcome = "depends on whether the request carries tools (--tools / --no-tools)"
    else:
        first = policy.ladders[ladder][route.rungs[0]]
        outcome = f"served by {endpoint_key(first.provider, first.model_for(features.model))} (tier {policy.tier_of(ladder, route.rungs[0])})"
    return Explanation(ladder, tuple(verdicts), outcome)


def _notes(policy: Policy, mode: ToolMode, window: int, needed: int, largest: int) -> tuple[str, ...]:
    notes = []
    if mode is ToolMode.READ_ONLY and policy.tools.write:
        notes.append(f"write tools removed ({', '.join(policy.tools.write)})")
    elif mode is ToolMode.PLAN_ONLY:
        notes.append("tools removed; the answer is the calls the model would make, as data")
    elif mode is ToolMode.NO_TOOLS:
        notes.append("tools removed")
    elif mode is ToolMode.RETRIEVAL_ONLY:
        notes.append(f"retrieval only: tools but {', '.join(policy.tools.retrieval) or 'none'} removed")
    if policy.context.trim and needed > window:
        notes.append(
            f"history trimmed to its {window}-token window ({needed} needed; system prompt and latest turns kept)"
        )
    elif policy.context.trim and window < largest:
        notes.append(f"a longer history is trimmed to its {window}-token window (system prompt and latest turns kept)")
    return tuple(notes)


def _capacity_reasons(
    policy: Policy, features: RequestFeatures, ladder: str, in_flight: Mapping[str, Mapping[str, int]]
) -> dict[int, str]:
    """The ladder's rungs that would refuse the request a slot now, with why (the pod's counts
    against the pod's limits: the same rules a worker applies to its share)."""
    out: dict[int, str] = {}
    holder = Holder(features.tenant, features.impact)
    for i, rung in enumerate(policy.ladders[ladder]):
        if rung.capacity is None:
            continue
        ledger = Ledger()
        held = in_flight.get(f"{ladder}/{i}", {})
        for tenant, n in held.items():
            for _ in range(n):
                # Only totals and per-tenant counts decide: the holders' impact is not needed.
                ledger.take((ladder, i), Holder(tenant, features.impact), 0.0)
        limits = Limits.of(rung.capacity)
        denial = ledger.admits((ladder, i), limits, holder, 0.0)
        total = sum(held.values())
        if denial is Denial.RUNG_FULL:
            out[i] = f"capacity: rung full ({total} of {limits.max_in_flight} in flight)"
        elif denial is Denial.RESERVED:
            out[i] = (
                f"capacity: the free slots are reserved for impacts above {features.impact.value} "
                f"({total} of {limits.max_in_flight} in flight, {limits.usable(features.impact)} usable)"
            )
        elif denial is Denial.TENANT_SHARE:
            out[i] = (
                f"capacity: tenant {features.tenant!r} holds its share "
                f"({held.get(features.tenant, 0)} of {limits.max_in_flight} in flight)"
            )
    return out


def features_for(policy: Policy, *, tenant: str, task: str, model: str, stream: bool, tools: bool | None,
                 impact: Impact | None = None, prompt_tokens: int | None = None) -> RequestFeatures:  # fmt: skip
    return RequestFeatures(
        dialect=Dialect.OPENAI,
        model=model,
        stream=stream,
        json_mode=False,
        max_tokens=None,
        body_bytes=None if prompt_tokens is None else prompt_tokens * BYTES_PER_TOKEN,
        tenant=tenant,
        task=task if task in policy.tasks else policy.default_task,
        impact=impact or policy.default_impact,
        has_tools=tools,
    )
