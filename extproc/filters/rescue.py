"""Rescuing a stream after its first token: which rung completes it, and the call that asks it.

A stream whose provider cut it (ended without a finish) or went silent (stream_stall_s) after the
client had tokens is completed from the next healthy rung of the decided order, when the task
class allows it and the relay says what the client has can be continued (text only: no tool call
started). The rung continues the delivered text as an assistant prefill if its provider declares
`prefill`, else regenerates the answer and the Splice drops what matches. The call goes through
Envoy's rescue listener (runtime/rescue.py); its bytes come back to the try as RescueItems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core import Capability, Decision, Dialect, Failure
from ..core.names import direct_cluster, endpoint_key
from ..policy import Policy
from ..routing import HealthView, prompt_tokens_estimate, tool_mode_of
from ..translate import (
    Delivered,
    PrefixMatch,
    RescueStrategy,
    Splice,
    TranslationError,
    api_pair,
    dump_json,
    load_json,
    rescue_body,
    rescue_strategy,
    shape_tools,
)
from .effects import RungCall
from .request import TryPlan


@dataclass(frozen=True, slots=True)
class Rescue:
    """A rescue under way: the rung completing the stream, the call, and the splice."""

    rung: int
    provider: str
    model: str
    key: str  # the rescue endpoint (provider/model)
    strategy: RescueStrategy
    call: RungCall
    splice: Splice


def plan_rescue(
    plan: TryPlan,
    policy: Policy,
    delivered: Delivered,
    client_body: bytes | None,
    health: HealthView | None,
    key_for: dict[str, str | None],
    *,
    primary: Failure,
    budget_s: float,
    regenerate_on: int | None = None,
) -> Rescue | None:
    """The rescue of this try's stream, or None when there is none to make (the task class does
    not rescue, the client has something other than text, no later rung may serve).
    `regenerate_on`: the rung refused a prefill (a 4xx): ask it again to regenerate instead."""
    d = plan.decision
    if not plan.stream or not plan.contract_task(policy).rescue or not delivered.rescuable or budget_s <= 0:
        return None
    if client_body is None:
        return None
    try:
        body = load_json(client_body)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    tools = bool(body.get("tools"))
    rungs = policy.ladders[d.ladder]
    after = d.rungs[d.rungs.index(plan.position.rung) + 1 :] if plan.position.rung in d.rungs else ()
    if regenerate_on is not None:
        after = (regenerate_on,)
    for index in after:
        rung = rungs[index]
        provider = policy.providers[rung.provider]
        model = rung.model_for(d.model)
        endpoint = endpoint_key(rung.provider, model)
        if Capability.STREAMING not in provider.capabilities:
            continue
        if tools and Capability.TOOLS not in provider.capabilities:
            continue
        # The rest of the same answer: never from a rung whose tool mode would take a tool away
        # (a write tool below its tier), nor one whose window would need the history trimmed.
        mode = tool_mode_of(policy, d.ladder, index)
        if (
            tools
            and shape_tools(
                d.dialect, body, mode, frozenset(policy.tools.write), frozenset(policy.tools.retrieval)
            ).removed
        ):
            continue
        if prompt_tokens_estimate(d.body_bytes) > policy.context_window_of(d.ladder, index):
            continue
        if health is not None and health(endpoint, False) is not None:
            continue
        strategy = RescueStrategy.REGENERATE if regenerate_on is not None else rescue_strategy(provider.capabilities)
        try:
            request = rescue_body(body, delivered, strategy, d.dialect, provider.dialect, model)
        except (ValueError, TranslationError):
            continue
        call = rung_call(policy, d, rung.provider, request, key_for.get(rung.provider), budget_s, stream=True)
        splice = Splice(
            d.dialect,
            provider.dialect,
            delivered,
            strategy,
            match=PrefixMatch(policy.stream_rescue_match),
            include_usage=d.include_usage,
            primary=primary,
        )
        return Rescue(index, rung.provider, model, endpoint, strategy, call, splice)
    return None


def rung_call(
    policy: Policy,
    decision: Decision,
    provider_name: str,
    request: dict[str, Any],
    key: str | None,
    budget_s: float,
    *,
    stream: bool,
) -> RungCall:
    """A call the runtime makes to a rung itself (a rescue, a shadow): the provider's cluster,
    path, its own key and static headers, and `request` already in its dialect."""
    provider = policy.providers[provider_name]
    pair = api_pair(decision.dialect, provider.dialect)
    headers = {
        "content-type": "application/json",
        **({"accept": "text/event-stream"} if stream else {}),
        **pair.auth_headers(key, anthropic_version=decision.anthropic_version, anthropic_beta=decision.anthropic_beta),
        **{k.lower(): v for k, v in provider.headers.items()},
    }
    return RungCall(
        cluster=direct_cluster(provider_name),
        path=pair.provider_path(provider.path_prefix),
        headers=headers,
        body=dump_json(request),
        budget_s=budget_s,
        dialect=provider.dialect.wire.value,
    )


def rescue_note(rescue: Rescue, client: Dialect) -> bytes:
    """An SSE comment marking the splice point (clients ignore comments; a person reading the raw
    stream sees which rung completed it)."""
    del client  # comments are the same in both dialects
    return f": rungway rescued-by {rescue.provider}/{rescue.model}\n\n".encode()
