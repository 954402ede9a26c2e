"""Which rungs of which ladder serve a request: a pure function of request features and policy.

Envoy cannot change an aggregate cluster's ordering per request, so every subsequence of every
ladder is rendered as its own aggregate cluster (`cluster_name`), and `choose` picks the one
whose ordering is exactly the rungs this request may use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..core import Capability, Dialect, Failure, Impact
from ..core.names import cluster_name, endpoint_key
from ..policy import Policy
from .capability import matrix_forbids, refuses_tools

# Rough prompt size from the body: ~4 bytes a token of English inside JSON. Over-estimates a
# little, which only matters for a rung whose window is nearly full anyway.
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    dialect: Dialect
    model: str
    stream: bool
    json_mode: bool
    max_tokens: int | None
    body_bytes: int | None
    tenant: str
    task: str
    impact: Impact
    # None until the body was seen: JSON-to-metadata in Envoy cannot report list-valued fields.
    has_tools: bool | None = None
    # The tier an operator's approval in force lets this tenant's task reach (routing/approval.py).
    approved_tier: int | None = None
    # The tenant is over its budget and its policy says `over: cheaper` (routing/spend.py).
    cheapest_only: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    ladder: str
    rungs: tuple[int, ...]
    cluster: str
    tries: int
    # Why the ladder's first rung is not serving (rungs dropped for this request), if so.
    skip_reason: Failure | None
    # Sent to the fallback rungs on purpose, to keep them measured (health.canary_share).
    canary: bool = False
    # A synthetic probe of one rung (sent by `rungway up`), not client traffic.
    probe: bool = False


def reroute(policy: Policy, route: Route, rungs: tuple[int, ...], stream: bool, **changes: Any) -> Route:
    """The same decision over a different subsequence of the ladder."""
    ladder = policy.ladders[route.ladder]
    return replace(
        route,
        rungs=rungs,
        cluster=cluster_name(route.ladder, rungs, stream),
        tries=sum(ladder[i].attempts for i in rungs),
        **changes,
    )


@dataclass(frozen=True, slots=True)
class Refusal:
    failure: Failure
    message: str


@dataclass(frozen=True, slots=True)
class NeedBody:
    """The choice depends on whether the request carries tools: ask Envoy for the body."""


def orderings(policy: Policy) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every (ladder, rung subsequence) that `choose` can return, in a stable order."""
    for ladder, rungs in policy.ladders.items():
        n = len(rungs)
        for mask in range(1, 1 << n):
            yield ladder, tuple(i for i in range(n) if mask >> i & 1)


def prompt_tokens_estimate(body_bytes: int | None) -> int:
    """The one estimate of a prompt's size in tokens, from its body's size."""
    return (body_bytes or 0) // BYTES_PER_TOKEN


# Asked per rung endpoint ("provider/model") in ladder order: None if the request may use it,
# else why not. `first` tells whether it would be the request's first rung (a half-open
# circuit admits its probe only then). Supplied by the health board; None means no board.
HealthView = Callable[[str, bool], Failure | None]


def choose(policy: Policy, features: RequestFeatures, health: HealthView | None = None) -> Route | Refusal | NeedBody:
    ladder = policy.ladder_for(features.model, features.task)
    if ladder is None:
        return Refusal(
            Failure.CLIENT_ERROR,
            f"model {features.model!r} is not served here: no entry of the policy's model map matches it",
        )
    rungs = policy.ladders[ladder]
    needed = prompt_tokens_estimate(features.body_bytes) + (features.max_tokens or 0)
    kept: list[int] = []
    dropped: list[Failure] = []
    forbidden: list[str] = []  # what the tenant's policy ruled out, for an honest refusal
    tools_matter = False
    for i, rung in enumerate(rungs):
        provider = policy.providers[rung.provider]
        caps = provider.capabilities
        not_permitted = tenant_forbids(
            policy, features.tenant, features.task, ladder, i, features.approved_tier
        ) or matrix_forbids(policy, features.task, ladder, i, features.model)
        if not_permitted is not None:
            dropped.append(Failure.NOT_PERMITTED)
            forbidden.append(not_permitted)
            continue
        if features.stream and Capability.STREAMING not in caps:
            dropped.append(Failure.TOOL_MISMATCH)
            continue
        if features.json_mode and Capability.JSON_MODE not in caps:
            dropped.append(Failure.SCHEMA_ERROR)
            continue
        if needed > policy.context_window_of(ladder, i) and not policy.context.trim:
            dropped.append(Failure.CONTEXT_OVERFLOW)
            continue
        if refuses_tools(policy, ladder, i):
            if features.has_tools is None:
                tools_matter = True
            elif features.has_tools:
                dropped.append(Failure.TOOL_MISMATCH)
                continue
        kept.append(i)
    if tools_matter:
        return NeedBody()
    priced_out: list[int] = []  # over budget: only the cheapest permitted rungs serve
    if features.cheapest_only and kept:
        cheapest = min(rung_price(policy, ladder, i) for i in kept)
        priced_out = [i for i in kept if rung_price(policy, ladder, i) > cheapest]
        kept = [i for i in kept if i not in priced_out]
    if not kept:
        if forbidden:
            return _not_permitted(policy, features, forbidden)
        failure = dropped[0] if len(set(dropped)) == 1 else Failure.CLIENT_ERROR
        return Refusal(failure, _refusal_message(ladder, failure))
    skip = (Failure.BUDGET_EXCEEDED if 0 in priced_out else dropped[0]) if kept[0] != 0 else None
    if health is not None:
        healthy: list[int] = []
        unhealthy: list[Failure] = []
        for i in kept:
            why = health(endpoint_key(rungs[i].provider, rungs[i].model_for(features.model)), not healthy)
            if why is None:
                healthy.append(i)
            else:
                unhealthy.append(why)
        # Every rung unwell: still try them all in order rather than answer with an outage —
        # unless the tenant's policy is what took the others away: then say so.
        if not healthy and forbidden:
            first = rungs[kept[0]]
            down = (
                f"{endpoint_key(first.provider, first.model_for(features.model))} is unavailable ({unhealthy[0].value})"
            )
            return _not_permitted(policy, features, [down, *forbidden])
        if healthy:
            if healthy[0] != kept[0]:
                skip = skip or unhealthy[0]
            kept = healthy
    order = tuple(kept)
    return Route(
        ladder=ladder,
        rungs=order,
        cluster=cluster_name(ladder, order, features.stream),
        # Envoy's attempts: every slot of the ordering. Slots a failure class may not use are
        # skipped by the attempt filter; policy.max_attempts caps the tries that reach a provider.
        tries=sum(rungs[i].attempts for i in order),
        skip_reason=skip,
    )


def rung_price(policy: Policy, ladder: str, index: int) -> float:
    """A rung's price per 1,000 tokens in and out (its provider's), to find a ladder's cheapest."""
    cost = policy.providers[policy.ladders[ladder][index].provider].cost_per_1k
    return cost.input + cost.output


def tenant_forbids(
    policy: Policy, tenant: str, task: str, ladder: str, index: int, approved_tier: int | None = None
) -> str | None:
    """Why the tenant's policy rules this rung out, or None (T2: tiers, per task, approvals,
    residency)."""
    rules = policy.tenant(tenant)
    tier = policy.tier_of(ladder, index)
    lowest = rules.lowest_tier_for(task)
    if tier > lowest:
        return f"tier {tier} is below the lowest tier tenant {tenant!r} permits for {task!r} ({lowest})"
    beyond = rules.approval_beyond_tier
    if beyond is not None and tier > beyond and (approved_tier is None or tier > approved_tier):
        return (
            f"tier {tier} needs an operator's approval for tenant {tenant!r} "
            f"(`rungway approve --tenant {tenant} --tier {tier} --for 1h`)"
        )
    if rules.regions is not None:
        region = policy.providers[policy.ladders[ladder][index].provider].region
        if region not in rules.regions:
            return f"region {region or 'unknown'} is outside tenant {tenant!r}'s residency ({', '.join(rules.regions)})"
    return None


def _not_permitted(policy: Policy, features: RequestFeatures, reasons: list[str]) -> Refusal:
    message = policy.tenant(features.tenant).message
    return Refusal(Failure.NOT_PERMITTED, f"{message}: {'; '.join(reasons)}")


def _refusal_message(ladder: str, failure: Failure) -> str:
    why = {
        Failure.CONTEXT_OVERFLOW: "the request is larger than every rung's context window",
        Failure.TOOL_MISMATCH: "no rung supports what the request needs (tools or streaming)",
        Failure.SCHEMA_ERROR: "no rung supports the requested JSON mode",
    }.get(failure, "no rung of the ladder can serve this request")
    return f"ladder {ladder!r}: {why}"
