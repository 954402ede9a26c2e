"""Continuous verification (D2): which other rungs a sampled request is shadowed to, the calls
that ask them, and what their answers say about them.

decide samples a share of requests (Decision.shadow); the first try of a sampled request plans a
non-streamed call to every other rung of its ladder that the tenant permits (tiers, residency)
and that can express the request (tools), and returns them as ShadowRequested effects. The
runtime (runtime/shadow.py) makes the calls through Envoy's side listener, never on the client's
path, and judges each answer here: the task's health contract, then the rung's latency baseline.
"""

from __future__ import annotations

from typing import Any

from ..core import Capability
from ..core.names import endpoint_key
from ..health.contract import Contract, judge_answer
from ..policy import Cost, Policy
from ..routing import tenant_forbids
from ..routing.capability import matrix_forbids, refuses_tools, tool_mode_of
from ..routing.spend import SpendLedger
from ..translate import TranslationError, api_pair, input_tokens, output_tokens, shape_tools
from .effects import ShadowRequested
from .request import TryPlan
from .rescue import rung_call

# What the client asked of its own stream: a shadow's answer is a whole JSON body.
_STREAM_FIELDS = ("stream", "stream_options")


def plan_shadows(
    plan: TryPlan,
    policy: Policy,
    body: dict[str, Any],
    key_for: dict[str, str | None],
    contract: Contract,
) -> list[ShadowRequested]:
    """One call per other rung of the ladder that may serve this tenant's request."""
    d = plan.decision
    settings = policy.shadow
    whole = {k: v for k, v in body.items() if k not in _STREAM_FIELDS}
    tools = bool(body.get("tools"))
    out: list[ShadowRequested] = []
    for index, rung in enumerate(policy.ladders[d.ladder]):
        if (
            index == plan.position.rung
            or tenant_forbids(policy, d.tenant, d.task, d.ladder, index) is not None
            or matrix_forbids(policy, d.task, d.ladder, index, d.model) is not None
        ):
            continue
        provider = policy.providers[rung.provider]
        caps = provider.capabilities
        if (
            (tools and refuses_tools(policy, d.ladder, index))
            or (plan.json_mode and Capability.JSON_MODE not in caps)
            or plan.prompt_tokens > policy.context_window_of(d.ladder, index)
        ):
            continue  # a rung the ladder would not send this request to
        model = rung.model_for(d.model)
        pair = api_pair(d.dialect, provider.dialect)
        try:
            # What this rung would really be sent: its tool mode (never a write tool below the
            # tier the policy names), then its provider's dialect.
            shaped = shape_tools(
                d.dialect,
                whole,
                tool_mode_of(policy, d.ladder, index),
                frozenset(policy.tools.write),
                frozenset(policy.tools.retrieval),
            )
            request = pair.request(shaped.body, model)
        except (ValueError, TranslationError):
            continue
        call = rung_call(
            policy, d, rung.provider, request, key_for.get(rung.provider), settings.timeout_s, stream=False
        )
        endpoint = endpoint_key(rung.provider, model)
        out.append(
            ShadowRequested(call, provider.dialect, d.tenant, d.ladder, index, endpoint, contract, provider.cost_per_1k)
        )
    return out


def judge_shadow(
    shadow: ShadowRequested,
    status: int,
    body: bytes,
    elapsed_s: float,
    baseline_s: float | None,
    slow_factor: float,
) -> tuple[str, float]:
    """The shadow's verdict ("ok", "slow", or the failure class its answer shows) and its cost.
    A failed answer costs what its usage says, if anything."""
    judged = judge_answer(shadow.dialect, status, body, shadow.contract)
    cost = answer_cost(judged.parsed, shadow.cost_per_1k)
    if judged.failure is not None:
        return judged.failure.value, cost
    if baseline_s is not None and elapsed_s > slow_factor * baseline_s:
        return "slow", cost
    return "ok", cost


def answer_cost(parsed: Any, prices: Cost) -> float:
    """An answer's cost from its usage and the provider's prices per 1,000 tokens."""
    return prices.of(input_tokens(parsed) or 0, output_tokens(parsed) or 0)


class ShadowLedger:
    """What each tenant's shadows cost in the current hour (per worker process), so continuous
    verification never spends more than the policy allows: the budgets' SpendLedger, with one
    hourly cost limit. Time in, no clock of its own."""

    WINDOW_S = 3600.0

    def __init__(self, cap_per_hour: float) -> None:
        self._cap = cap_per_hour
        self._spend = SpendLedger({}, default_window_s=self.WINDOW_S)

    def allows(self, tenant: str, now: float) -> bool:
        """Whether the tenant may have another shadow now (its last one may overshoot the cap by
        that call's cost: a cost is known only from the answer)."""
        return self.spent(tenant, now) < self._cap

    def spend(self, tenant: str, cost: float, now: float) -> None:
        self._spend.record(tenant, 0, cost, now)

    def spent(self, tenant: str, now: float) -> float:
        return self._spend.spent(tenant, now)[1]
