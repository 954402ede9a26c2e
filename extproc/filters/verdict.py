"""Judging a try's answer and choosing what happens next: served to the client, waited out on
the same rung (a short Retry-After), hopped to the next rung (flipped to 503 so Envoy's router
retries), or final (the client's answer is this failure, in its own dialect)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..core import CLIENT_STATUS, OUTAGES, Failure, ToolMode, TripRecord
from ..core.names import RETRY_HEADER
from ..health.contract import Contract, judge_answer
from ..policy import Exhausted, Policy
from ..routing import Action, next_step
from ..translate import TranslationError, canned_answer, dump_json, input_tokens, output_tokens, redact_error_body
from .flags import CANARY, flags
from .request import TryPlan, TryShape


class Next(StrEnum):
    SERVED = "served"
    SAME = "same"  # the same rung's next slot
    WAIT = "wait"  # the same rung's next slot, after the provider's Retry-After
    HOP = "hop"  # a later rung
    FINAL = "failed"


@dataclass(frozen=True, slots=True)
class Ruling:
    next: Next
    failure: Failure | None  # also set for a served safety refusal
    set_headers: dict[str, str]
    body: bytes | None  # None: the provider's body stands
    record: TripRecord | None  # for the next try; None when served
    output_tokens: int | None = None
    input_tokens: int | None = None


# Envoy's response flags on the relay's own answers: the provider was never heard from.
_CONNECT_FLAGS = frozenset({"UF", "UC", "UR", "UH", "URX", "UO", "UPE", "DPE"})


_RELAY_DETAIL = {
    Failure.TIMEOUT: "the provider did not answer within the rung's {budget:g}s budget",
    Failure.CONNECT_ERROR: "the connection to the provider failed",
}


def relay_failure(flags: str | None) -> Failure | None:
    """The failure the relay itself reported (its response flags), or None for a provider's answer."""
    if not flags or flags == "-":
        return None
    codes = set(flags.split(","))
    if "UT" in codes:
        return Failure.TIMEOUT  # the rung's per-try budget ran out before the provider answered
    if codes & _CONNECT_FLAGS:
        return Failure.CONNECT_ERROR
    return None


def answer_flags(plan: TryPlan, policy: Policy, failure: Failure | None, *, shape: TryShape) -> dict[str, str]:
    """The x-rungway-* headers of the client's answer (A2), with what the try's rewrite did."""
    position = plan.position
    degraded = position.rung != 0 or shape.degraded
    reason: Failure | str | None = failure if failure is not None else (plan.why if degraded else None)
    if reason is None and plan.decision.canary and degraded:
        reason = CANARY
    if shape.degraded and reason is None:
        reason = Failure.TOOL_MISMATCH if shape.tools_removed else Failure.CONTEXT_OVERFLOW
    tier = policy.tier_of(position.ladder, position.rung)
    return flags(
        served_by=f"{plan.provider_name}/{plan.model}",
        tier=tier,
        degraded=degraded,
        reason=reason,
        policy_version=policy.stamp,
        attempts=plan.real_tries,  # tries that reached a provider (Envoy also counts skipped slots)
        tool_mode=None if plan.tool_mode is ToolMode.FULL else plan.tool_mode.value,  # full: as before T5
        tools_removed=shape.tools_removed,
        trimmed=shape.trimmed,
        notice=policy.tier_notices.get(tier),
    )


def rule_on_answer(
    plan: TryPlan,
    policy: Policy,
    status: int,
    body: bytes,
    *,
    retry_after_s: float | None,
    request_schema: dict[str, object] | None,
    shape: TryShape,
    created: int,
    relay_flags: str | None = None,
) -> Ruling:
    """A whole answer (JSON, or the held error answer of a stream request) → what happens next.
    `relay_flags`: when the relay answered itself (the rung's budget ran out, the provider could
    not be reached), that is the failure, whatever its body says."""
    relayed = relay_failure(relay_flags)
    if relayed is not None:
        detail = _RELAY_DETAIL[relayed].format(budget=plan.rung.timeout_s)
        return rule_on_failure(
            plan,
            policy,
            relayed,
            detail,
            status=None,
            provider_body=b"",
            retry_after_s=None,
            shape=shape,
            created=created,
        )
    contract = Contract(plan.contract_task(policy), request_schema=request_schema, json_mode=plan.json_mode)
    judged = judge_answer(plan.provider.dialect, status, body, contract)
    failure, detail = judged.failure, judged.detail
    served = 200 <= status < 300 and (
        failure is None or (failure is Failure.SAFETY_BLOCK and not policy.hop_on_safety_block)
    )
    if served:
        # A provider's refusal is an answer too: propagated as the client's answer.
        new_body: bytes | None = None
        expressible = True
        if plan.pair.translates:
            try:
                new_body = dump_json(plan.pair.answer(judged.parsed, plan.model, created))
            except TranslationError:
                expressible = False
                failure, detail = Failure.SCHEMA_ERROR, "the provider's answer cannot be expressed in the client's API"
        if expressible:
            set_headers = answer_flags(plan, policy, failure, shape=shape)
            if new_body is not None:
                set_headers["content-length"] = str(len(new_body))
            return Ruling(
                Next.SERVED,
                failure,
                set_headers,
                new_body,
                None,
                output_tokens(judged.parsed),
                input_tokens(judged.parsed),
            )
    assert failure is not None
    return rule_on_failure(
        plan,
        policy,
        failure,
        detail,
        status=status,
        provider_body=body,
        retry_after_s=retry_after_s,
        shape=shape,
        created=created,
    )


def rule_on_failure(
    plan: TryPlan,
    policy: Policy,
    failure: Failure,
    detail: str,
    *,
    status: int | None,
    provider_body: bytes,
    retry_after_s: float | None,
    shape: TryShape,
    can_wait: bool = True,
    created: int = 0,
) -> Ruling:
    """A failed try → wait, hop or final. `status` is the provider's, when it answered with an
    error (its error body is then passed on as it is when already in the client's dialect).
    `can_wait`: False when the provider's status was a 200 (a stream that failed before its
    first token): Envoy waits out Retry-After only on a 429 it sees."""
    step = next_step(policy, plan.position, failure, retry_after_s, plan.real_tries)
    action = step.action
    if action is Action.WAIT and not can_wait:
        action = Action.SAME
    record = plan.record(failure, step.next_rung)
    if action is Action.WAIT:
        flags_ = answer_flags(plan, policy, failure, shape=shape)
        return Ruling(Next.WAIT, failure, {**flags_, RETRY_HEADER: "1"}, None, record)
    err = plan.pair.error(failure, detail)
    error_headers = {"content-type": "application/json", "content-length": str(len(err))}
    if action in (Action.SAME, Action.HOP):
        # A 503 is what Envoy's router retries: on this rung's next slot, or (the attempt filter
        # skipping the slots in between) on the rung the record names.
        return Ruling(Next(action.value), failure, {":status": "503", RETRY_HEADER: "1", **error_headers}, err, record)
    exhausted = exhausted_for(plan, policy, failure)
    if exhausted is not None:
        headers, body = exhausted_answer(plan, policy, failure, exhausted, created)
        return Ruling(Next.FINAL, failure, headers, body, record)
    set_headers = answer_flags(plan, policy, failure, shape=shape)
    provider_error = status is not None and not 200 <= status < 300
    set_headers[":status"] = str(status if provider_error else CLIENT_STATUS[failure])
    if provider_error and not plan.pair.translates and provider_body:
        # Already the client's dialect: passed on, less anything shaped like a key (a provider's
        # 401 may echo the rung's key, masked or not).
        clean = redact_error_body(provider_body)
        if clean is provider_body:
            return Ruling(Next.FINAL, failure, set_headers, None, record)
        return Ruling(Next.FINAL, failure, {**set_headers, "content-length": str(len(clean))}, clean, record)
    return Ruling(Next.FINAL, failure, {**set_headers, **error_headers}, err, record)


def exhausted_for(plan: TryPlan, policy: Policy, failure: Failure) -> Exhausted | None:
    """The task's own answer for an outage no rung could serve (T6), if it has one: never for
    a probe, nor for the request's own fault."""
    exhausted = plan.contract_task(policy).when_exhausted
    return exhausted if failure in OUTAGES and not plan.decision.probe else None


def exhausted_answer(
    plan: TryPlan, policy: Policy, failure: Failure, exhausted: Exhausted, created: int
) -> tuple[dict[str, str], bytes]:
    """The headers and body of the task's own answer when no rung could serve (T6): a 200 in
    the client's dialect, flagged degraded at the product tier the policy names."""
    d = plan.decision
    content_type, body = canned_answer(
        d.dialect,
        model=d.model,
        text=exhausted.message,
        stream=d.stream,
        include_usage=d.include_usage,
        id_token=format(int(plan.started_ms), "x"),
        created=created,
    )
    kind = "handoff" if exhausted.tier == 3 else "static"
    headers = flags(
        served_by=f"rungway/{kind}",
        tier=exhausted.tier,
        degraded=True,
        reason=failure,
        policy_version=policy.stamp,
        attempts=plan.real_tries,
        notice=policy.tier_notices.get(exhausted.tier),
    )
    return {**headers, ":status": "200", "content-type": content_type, "content-length": str(len(body))}, body
