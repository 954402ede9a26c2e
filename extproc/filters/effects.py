"""What a processor's work changes outside itself, returned as values.

Processors never touch metrics, the health board or the bus: they append effects, and the
runtime applies them after each message (time in, effects out). Tests read them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audit import Entry
from ..core import (
    Decision,
    DeferredTask,
    DegradedAnswer,
    Dialect,
    Escalation,
    Failure,
    Impact,
    Observation,
    QuotaSignal,
    TaskResult,
)
from ..health.contract import Contract
from ..policy import Cost
from ..routing.hold import HoldOutcome
from .wire import ProcessingResponse


@dataclass(frozen=True, slots=True)
class Decided:
    """decide's outcome for a request: routed, refused or invalid."""

    tenant: str
    task: str
    ladder: str
    outcome: str
    policy: str  # the revision it was decided under (Policy.stamp)


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """decide refused a caller it could not identify (the reason is an Unknown's name)."""

    reason: str


@dataclass(frozen=True, slots=True)
class BudgetReached:
    """decide met a tenant over its budget (T4): refused, or sent to the cheapest rung."""

    tenant: str
    reason: str  # tokens, cost, cost_rate
    action: str  # refuse, cheaper


@dataclass(frozen=True, slots=True)
class RequestCounted:
    """One more routed request: for the fleet's retry budget."""


@dataclass(frozen=True, slots=True)
class Arrived:
    """A chat request past identification: in flight at the worker from now (load shedding),
    before decide may still wait for its body (the audit trail's hash, tools), so that a burst
    arriving at once is counted as it arrives."""


@dataclass(frozen=True, slots=True)
class HoldStarted:
    """decide holds a request of the tenant waiting for an operator's approval (routing/hold.py)."""

    tenant: str


@dataclass(frozen=True, slots=True)
class HoldEnded:
    """A request stopped waiting for an approval (or, `full`, was never held). Every HoldStarted
    is followed by exactly one HoldEnded that is not `full`."""

    tenant: str
    outcome: HoldOutcome


@dataclass(frozen=True, slots=True)
class Shed:
    """decide answered 503 + Retry-After at once: the worker had max_in_flight in flight."""


@dataclass(frozen=True, slots=True)
class SlotReserved:
    """decide routed a request: it holds a slot of its first rung until a try takes it up."""

    ladder: str
    rung: int
    tenant: str
    impact: Impact


@dataclass(frozen=True, slots=True)
class RungTaken:
    """A try started on a rung: it holds a slot there until its stream ends (RungFreed)."""

    ladder: str
    rung: int
    tenant: str
    impact: Impact


@dataclass(frozen=True, slots=True)
class RungFreed:
    ladder: str
    rung: int
    tenant: str
    impact: Impact


@dataclass(frozen=True, slots=True)
class RungLimited:
    """decide dropped a rung from a request's route: no capacity for its tenant and impact
    (`reason`: a routing.capacity.Denial)."""

    ladder: str
    rung: int
    tenant: str
    impact: Impact
    reason: str


@dataclass(frozen=True, slots=True)
class CapacityShed:
    """No rung of the route had capacity: decide answered 503/429 + Retry-After at once."""

    tenant: str
    impact: Impact
    reason: str


@dataclass(frozen=True, slots=True)
class HalfOpenAdmitted:
    """A live request takes one of a half-open circuit's probe slots (live_half_open)."""

    key: str


@dataclass(frozen=True, slots=True)
class Tried:
    """How a try on a rung ended for the request: served, hop, wait, failed, rejected, refused."""

    ladder: str
    rung: int
    provider: str
    model: str
    outcome: str


@dataclass(frozen=True, slots=True)
class Tripped:
    """A failed try, by failure class (counted once per try)."""

    ladder: str
    rung: int
    provider: str
    model: str
    reason: Failure


@dataclass(frozen=True, slots=True)
class Served:
    """An answer delivered to the client."""

    tenant: str
    task: str
    ladder: str
    tier: int
    degraded: bool
    rung: int
    # The request's decision (None in tests that need no more): a recovery to tier 0 is
    # audited with the request it was seen on (E3).
    decision: Decision | None = None


@dataclass(frozen=True, slots=True)
class KeptForReview:
    """An answer served below tier 0 to a tenant whose policy re-runs it on recovery (E3): the
    runtime keeps it in the review store (off the request's path)."""

    item: DegradedAnswer


@dataclass(frozen=True, slots=True)
class TryEnded:
    """A try's end as the per-tenant latency, token and cost metrics see it (A3). `failure` is
    the first failure the try saw (None: it answered cleanly); `first_token_s` is when the client
    had the first of its answer (a stream's first token, a whole answer's body), None if never;
    tokens are the provider's usage where it reported one (else our estimate), None if none."""

    tenant: str
    task: str
    ladder: str
    rung: int
    provider: str
    model: str
    failure: Failure | None
    duration_s: float
    first_token_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Reshaped:
    """A try's rewrite gave its rung less than the client sent: tools its mode removed (T5),
    messages trimmed to fit its window (F6)."""

    ladder: str
    rung: int
    tool_mode: str
    tools_removed: int
    trimmed: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """How a streamed answer ended: complete, finalised, interrupted, cut, provider_error."""

    outcome: str


@dataclass(frozen=True, slots=True)
class RungCall:
    """One HTTP call to a rung that the runtime makes itself, through Envoy's side listener (a
    stream rescue, a shadow): the provider's cluster, path, headers (its key among them) and body."""

    cluster: str
    path: str
    headers: dict[str, str]
    body: bytes
    budget_s: float  # the whole call: first byte and the rest
    dialect: str  # the provider's wire dialect (to read its answers)


@dataclass(frozen=True, slots=True)
class RescueRequested:
    """A stream is rescued: the runtime makes `call` and feeds what comes back to the try."""

    call: RungCall


@dataclass(frozen=True, slots=True)
class Rescued:
    """How a stream rescue ended: rescued, or why not (the Splice's outcome)."""

    ladder: str
    from_rung: int
    to_rung: int
    outcome: str


@dataclass(frozen=True, slots=True)
class ShadowRequested:
    """Continuous verification: ask another rung the same request, non-streamed, off the
    client's path, and judge its answer (runtime/shadow.py)."""

    call: RungCall
    dialect: Dialect  # the rung's provider's
    tenant: str
    ladder: str
    rung: int
    endpoint: str  # provider/model
    contract: Contract  # the health contract its answer is held to
    cost_per_1k: Cost  # the provider's prices, to attribute the shadow's cost to the tenant


@dataclass(frozen=True, slots=True)
class TryRefused:
    """attempt refused a try it cannot serve safely (e.g. decided under another policy)."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Deferred:
    """decide defers a request: the runtime stores `task` durably and only then answers with
    `accepted` (202); `full` when the tenant's queue is at capacity, `unavailable` when the
    store failed. The processor sends nothing itself."""

    task: DeferredTask
    capacity: int
    accepted: ProcessingResponse
    full: ProcessingResponse
    unavailable: ProcessingResponse
    # The audit record of the deferral (audit trail on): the runtime writes it with the outcome
    # (accepted, full, unavailable) as its trigger once the store has answered.
    entry: Entry | None = None


@dataclass(frozen=True, slots=True)
class Escalated:
    """attempt suspends an answer for a person (E2): the runtime stores the task, its
    escalation and the candidate answer durably, and only then answers with `accepted` (202,
    the task contract of a deferral); `unavailable` when the store failed."""

    task: DeferredTask
    escalation: Escalation
    candidate: TaskResult | None
    accepted: ProcessingResponse
    unavailable: ProcessingResponse
    # The `escalated` audit record (audit trail on): the runtime writes it with the store's
    # answer (escalated, unavailable) as detail["outcome"] once the store has answered.
    entry: Entry | None = None


@dataclass(frozen=True, slots=True)
class TaskQueried:
    """A client asks for its deferred task: the runtime reads the store and answers
    (filters.deferral.task_answer renders it). The processor sends nothing itself."""

    tenant: str
    task_id: str
    dialect: Dialect
    policy_version: str


@dataclass(frozen=True, slots=True)
class Audited:
    """A decision that left tier 0, for the audit trail (the runtime chains and writes it)."""

    entry: Entry


Effect = (
    Decided
    | Unauthenticated
    | BudgetReached
    | RequestCounted
    | Arrived
    | HoldStarted
    | HoldEnded
    | Shed
    | SlotReserved
    | RungTaken
    | RungFreed
    | RungLimited
    | CapacityShed
    | HalfOpenAdmitted
    | Tried
    | Tripped
    | Served
    | KeptForReview
    | Reshaped
    | TryEnded
    | StreamEnded
    | RescueRequested
    | Rescued
    | ShadowRequested
    | TryRefused
    | Deferred
    | Escalated
    | TaskQueried
    | Audited
    | Observation
    | QuotaSignal
)


# What the runtime feeds back to a try from its rescue call.
@dataclass(frozen=True, slots=True)
class RescueChunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class RescueEnded:
    """The rescue rung's answer ended (cleanly: whether it was complete is the Splice's to say)."""


@dataclass(frozen=True, slots=True)
class RescueFailed:
    """The rescue call failed before or while streaming (status, connect error, budget)."""

    failure: Failure
    message: str


RescueItem = RescueChunk | RescueEnded | RescueFailed
