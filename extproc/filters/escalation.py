"""Escalation's answers, rendered without I/O (E2): the effect that suspends a judged answer
(the task, its escalation record, the candidate answer, and the 202 the client gets once it is
stored), and the answers a person's decision leaves for the client to fetch.

The 202 keeps deferral's header contract (`x-rungway-task-id`, `location`, `x-rungway-task-status:
escalated`, `retry-after`, the body in the client's dialect's envelope), plus
`x-rungway-escalation: escalated`; it replaces the provider's answer in the response-body phase of
a buffered (never a streamed) answer, before any byte of it reached the client.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from ..audit import Entry, Kind
from ..core import (
    DeferredTask,
    Escalation,
    Failure,
    Resolution,
    Review,
    Step,
    TaskResult,
)
from ..core.names import ESCALATION_HEADER, REASON, TASKS_PATH
from ..deferral import TaskState
from ..escalation import Signals
from ..policy import Policy
from ..translate import load_json, mean_logprob, render_error
from .deferral import task_body, task_headers
from .effects import Escalated
from .flags import flags
from .request import TryPlan
from .trail import rung_ref
from .verdict import Next, Ruling
from .wire import ProcessingResponse

# An answer that broke the task's contract: with no rung left, a person may still want it.
CONTRACT_FAILURES = frozenset({Failure.SCHEMA_ERROR, Failure.QUALITY_REGRESSION, Failure.TOOL_MISMATCH})
# Headers a stored answer never keeps: Envoy and the status answer set their own.
_NOT_STORED = frozenset({":status", "content-length"})


def contract_failed(ruling: Ruling, status: int) -> bool:
    """The provider answered (2xx) but the answer broke the contract and no rung is left, or a
    safety refusal is served as the answer."""
    if ruling.next is Next.FINAL:
        return 200 <= status < 300 and ruling.failure in CONTRACT_FAILURES
    return ruling.next is Next.SERVED and ruling.failure is Failure.SAFETY_BLOCK


def signals_of(
    plan: TryPlan, policy: Policy, ruling: Ruling, status: int, provider_body: bytes, score: float | None
) -> Signals:
    parsed: Any = None
    if ruling.next is Next.SERVED:
        try:
            parsed = load_json(provider_body)
        except ValueError:
            parsed = None
    return Signals(
        impact=plan.decision.impact,
        tier=policy.tier_of(plan.position.ladder, plan.position.rung),
        score=score,
        contract_failed=contract_failed(ruling, status),
        mean_logprob=mean_logprob(plan.provider.dialect, parsed) if parsed is not None else None,
    )


def candidate_of(ruling: Ruling, status: int, provider_body: bytes, now: float) -> TaskResult | None:
    """The answer the client would have had, as a stored task result (flags included): only a
    served answer is a candidate."""
    if ruling.next is not Next.SERVED:
        return None
    headers = {k: v for k, v in ruling.set_headers.items() if k not in _NOT_STORED}
    headers.setdefault("content-type", "application/json")
    body = ruling.body if ruling.body is not None else provider_body
    return TaskResult(int(ruling.set_headers.get(":status", status)), tuple(sorted(headers.items())), body, now)


def history_of(plan: TryPlan, ruling: Ruling) -> tuple[Step, ...]:
    """The rungs the request went through, as far as this try knows: why it left its first
    rung, the previous try, and this one."""
    steps: list[Step] = []
    previous = plan.previous
    if previous is not None and previous.first_failure is not None and previous.rung != 0:
        steps.append(Step(0, previous.first_failure.value))
    if previous is not None and not previous.skipped:
        steps.append(Step(previous.rung, previous.failure.value if previous.failure else "unknown"))
    elif previous is None and plan.decision.skip is not None and plan.position.rung != 0:
        steps.append(Step(0, plan.decision.skip.value))  # decide skipped the primary
    outcome = "served" if ruling.next is Next.SERVED else (ruling.failure or Failure.SERVER_ERROR).value
    steps.append(Step(plan.position.rung, outcome))
    return tuple(steps)


def escalate(
    plan: TryPlan,
    policy: Policy,
    *,
    reasons: tuple[str, ...],
    signals: Signals,
    ruling: Ruling,
    status: int,
    provider_body: bytes,
    client_body: bytes,
    client_path: str,
    now: float,
    render: Callable[[dict[str, str], bytes], ProcessingResponse],
    handoff: bool = False,
) -> Escalated:
    """The effect that suspends this answer: stored, then the client's 202. `render` puts
    headers and body in place of the provider's answer (the attempt filter's, with its scrub).
    `handoff`: the ruling is the task's human-handoff notice (T6 tier 3): the 202 says tier 3,
    and a store that fails gives the client that notice rather than a 503."""
    d = plan.decision
    rung = plan.position.rung
    candidate = candidate_of(ruling, status, provider_body, now)
    task = DeferredTask(
        id="task_" + secrets.token_urlsafe(18),
        tenant=d.tenant,
        task=d.task,
        impact=d.impact,
        dialect=d.dialect,
        path=client_path,
        model=d.model,
        headers=tuple(
            (name, value)
            for name, value in (("anthropic-version", d.anthropic_version), ("anthropic-beta", d.anthropic_beta))
            if value is not None
        ),
        body=client_body,
        accepted_at=now,
    )
    escalation = Escalation(
        id=task.id,
        tenant=d.tenant,
        task=d.task,
        impact=d.impact,
        ladder=plan.position.ladder,
        rung=rung,
        tier=signals.tier,
        served_by=f"{plan.provider_name}/{plan.model}",
        reasons=reasons,
        history=history_of(plan, ruling),
        policy=policy.stamp,
        request_id=d.request_id or "",
        prompt_hash=d.prompt_hash or "",
        at=now,
        score=signals.score,
        mean_logprob=signals.mean_logprob,
        has_candidate=candidate is not None,
    )
    reason = ruling.set_headers.get(REASON) or (ruling.failure.value if ruling.failure else "none")
    headers = {
        ":status": "202",
        "content-type": "application/json",
        **flags(
            served_by="rungway/handoff" if handoff else "rungway",
            tier=3 if handoff else None,
            degraded=True,
            reason=reason,
            policy_version=policy.stamp,
            attempts=plan.real_tries,
        ),
        **task_headers(task.id, TaskState.ESCALATED, flags_={}),
        ESCALATION_HEADER: "escalated",
    }
    body = task_body(task.id, d.dialect, d.model, TaskState.ESCALATED, now)
    accepted = {**headers, "content-length": str(len(body))}
    message = "this answer needs a person's review and could not be held for one; retry later"
    error = render_error(d.dialect.value, Failure.SERVER_ERROR, message)
    down = {
        ":status": "503",
        "content-type": "application/json",
        "content-length": str(len(error)),
        "retry-after": "5",
        **flags(
            served_by="rungway",
            tier=None,
            degraded=True,
            reason=Failure.SERVER_ERROR,
            policy_version=policy.stamp,
            attempts=plan.real_tries,
        ),
    }
    if handoff and ruling.body is not None:
        return Escalated(task, escalation, candidate, render(accepted, body), render(ruling.set_headers, ruling.body))
    return Escalated(task, escalation, candidate, render(accepted, body), render(down, error))


def approved_answer(candidate: TaskResult, now: float) -> TaskResult:
    """The candidate answer, as the client fetches it once a person approved it."""
    headers = {**dict(candidate.headers), ESCALATION_HEADER: Review.APPROVE.value + "d"}
    return TaskResult(candidate.status, tuple(sorted(headers.items())), candidate.body, now)


def rejected_answer(task: DeferredTask, resolution: Resolution, policy_version: str) -> TaskResult:
    """A clear error in the client's dialect: a person reviewing the answer rejected it."""
    why = f": {resolution.reason}" if resolution.reason else ""
    message = f"a person reviewing this request's answer rejected it{why}"
    body = render_error(task.dialect.value, Failure.NOT_PERMITTED, message)
    headers = {
        "content-type": "application/json",
        "x-should-retry": "false",
        ESCALATION_HEADER: "rejected",
        **flags(
            served_by="rungway",
            tier=None,
            degraded=True,
            reason=Failure.NOT_PERMITTED,
            policy_version=policy_version,
            attempts=0,
        ),
    }
    return TaskResult(403, tuple(sorted(headers.items())), body, resolution.at)


def event_body(escalation: Escalation, task: DeferredTask, candidate: TaskResult | None) -> bytes:
    """The on-call's webhook payload: why, the rungs it went through, the policy revision, the
    request as the client sent it (conversation, tools, the tool results it carried) and the
    candidate answer, with the status URL and the admin API's actions."""
    request: Any
    try:
        request = json.loads(task.body)
    except ValueError:
        request = task.body.decode(errors="replace")
    answer: Any = None
    if candidate is not None:
        try:
            candidate_body: Any = json.loads(candidate.body)
        except ValueError:
            candidate_body = candidate.body.decode(errors="replace")
        answer = {"status": candidate.status, "headers": dict(candidate.headers), "body": candidate_body}
    base = f"/escalations/{escalation.id}"
    payload = {
        "event": "escalation",
        **escalation.to_json(),
        "request": {"dialect": task.dialect.value, "path": task.path, "model": task.model, "body": request},
        "candidate": answer,
        "status_url": TASKS_PATH + escalation.id,
        "actions": {
            "approve": f"POST {base}/approve",
            "redirect": f"POST {base}/redirect",
            "reject": f"POST {base}/reject",
        },
    }
    return json.dumps(payload, separators=(",", ":")).encode()


class ReviewError(ValueError):
    """A decision that cannot be taken as given (an unknown rung, one the tenant does not permit)."""


def redirect_rung(policy: Policy, escalation: Escalation, task: DeferredTask, spec: object) -> int:
    """The rung of the escalation's ladder a redirect names: its index, or its provider (or
    `provider/model`). It must be one the tenant's rules permit for the task (tier, residency):
    a person redirects within the policy, never around it."""
    rungs = policy.ladders.get(escalation.ladder)
    if rungs is None:
        raise ReviewError(f"ladder {escalation.ladder!r} is not in the current policy")
    index: int | None = None
    if isinstance(spec, int) and not isinstance(spec, bool):
        index = spec
    elif isinstance(spec, str) and spec.isascii() and spec.isdigit():
        index = int(spec)
    elif isinstance(spec, str) and spec:
        named = [
            i
            for i, rung in enumerate(rungs)
            if spec in (rung.provider, f"{rung.provider}/{rung.model_for(task.model)}")
        ]
        index = named[0] if named else None
    if index is None or not 0 <= index < len(rungs):
        names = ", ".join(f"{i}={r.provider}/{r.model_for(task.model)}" for i, r in enumerate(rungs))
        raise ReviewError(f"no rung {spec!r} in ladder {escalation.ladder!r} ({names})")
    rules = policy.tenant(escalation.tenant)
    tier = policy.tier_of(escalation.ladder, index)
    if tier > rules.lowest_tier_for(escalation.task):
        raise ReviewError(f"rung {index} is tier {tier}: tenant {escalation.tenant!r} permits none beyond tier "
                          f"{rules.lowest_tier_for(escalation.task)} for {escalation.task!r}")  # fmt: skip
    region = policy.providers[rungs[index].provider].region
    if rules.regions is not None and region not in rules.regions:
        raise ReviewError(
            f"rung {index}'s region {region or 'unknown'} is outside the residency of tenant {escalation.tenant!r}"
        )
    return index


def reviewed(
    policy: Policy,
    escalation: Escalation,
    task: DeferredTask,
    candidate: TaskResult | None,
    review: Review,
    *,
    by: str,
    reason: str,
    rung: object,
    now: float,
) -> tuple[Resolution, TaskResult | None, Entry]:
    """A person's decision → what the store records, the answer the client will fetch (None:
    the request is replayed through Envoy, as it is or pinned) and the audit entry."""
    if not by:
        raise ReviewError("a decision says who takes it: 'by'")
    pin = redirect_rung(policy, escalation, task, rung) if review is Review.REDIRECT else None
    resolution = Resolution(review, by, reason, now, pin)
    answer: TaskResult | None = None
    if review is Review.APPROVE and candidate is not None:
        answer = approved_answer(candidate, now)
    elif review is Review.REJECT:
        answer = rejected_answer(task, resolution, policy.stamp)
    kind = {Review.APPROVE: Kind.APPROVED, Review.REDIRECT: Kind.REDIRECTED, Review.REJECT: Kind.REJECTED}[review]
    trigger = {Review.APPROVE: "candidate" if answer is not None else "replay"}.get(review, review.value)
    ladder = escalation.ladder
    entry = Entry(
        at=now,
        kind=kind,
        tenant=escalation.tenant,
        task=escalation.task,
        trigger=trigger,
        source=rung_ref(policy, ladder, escalation.rung, task.model)
        if escalation.rung < len(policy.ladders.get(ladder, ()))
        else None,
        target=rung_ref(policy, ladder, pin, task.model) if pin is not None else None,
        policy=policy.stamp,
        request_id=escalation.request_id,
        prompt_hash=escalation.prompt_hash,
        detail={"task_id": escalation.id, "by": by, "reason": reason},
    )
    return resolution, answer, entry
