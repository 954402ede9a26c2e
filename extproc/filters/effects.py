"""What a processor's work changes outside itself, returned as values.

Processors never touch metrics, the health board or the bus: they append effects, and the
runtime applies them after each message (time in, effects out). Tests read them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import Failure, Impact, Observation, QuotaSignal


@dataclass(frozen=True, slots=True)
class Decided:
    """decide's outcome for a request: routed, refused or invalid."""

    tenant: str
    task: str
    ladder: str
    outcome: str


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """decide refused a caller it could not identify (the reason is an Unknown's name)."""

    reason: str


@dataclass(frozen=True, slots=True)
class RequestCounted:
    """One more routed request: for the fleet's retry budget, and in flight at the worker."""


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


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """How a streamed answer ended: complete, finalised, interrupted, cut, provider_error."""

    outcome: str


@dataclass(frozen=True, slots=True)
class RescueCall:
    """One HTTP call to a rescue rung, as the runtime makes it through Envoy's rescue listener:
    the provider's cluster, path, headers (its key among them) and body."""

    cluster: str
    path: str
    headers: dict[str, str]
    body: bytes
    budget_s: float  # the whole call: first byte and the rest
    dialect: str  # the rescue provider's wire dialect (to read its error answers)


@dataclass(frozen=True, slots=True)
class RescueRequested:
    """A stream is rescued: the runtime makes `call` and feeds what comes back to the try."""

    call: RescueCall


@dataclass(frozen=True, slots=True)
class Rescued:
    """How a stream rescue ended: rescued, or why not (the Splice's outcome)."""

    ladder: str
    from_rung: int
    to_rung: int
    outcome: str


@dataclass(frozen=True, slots=True)
class TryRefused:
    """attempt refused a try it cannot serve safely (e.g. decided under another policy)."""

    reason: str
    detail: str


Effect = (
    Decided
    | Unauthenticated
    | RequestCounted
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
    | StreamEnded
    | RescueRequested
    | Rescued
    | TryRefused
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
