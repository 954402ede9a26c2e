"""Health-bus events: what one replica of the health board tells the others (H5).

Every event is a frozen dataclass with one encode/decode pair; `decode_event` reads any of them
from the bus's JSON and raises ContractError for anything malformed or foreign. JSON lets NaN,
Infinity and huge integers through, and events come from other processes and hosts: every
number is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import fields as f
from .failure import Failure

EVENT_VERSION = 1
_CIRCUIT_STATES = frozenset({"closed", "open", "half_open"})
_MAX_TOKENS = 10**9


@dataclass(frozen=True, slots=True)
class Observation:
    """One try's result at one endpoint (a synthetic probe's too)."""

    KIND = "obs"

    key: str
    at: float  # wall clock
    failure: Failure | None
    latency_s: float | None = None
    output_tokens: int | None = None
    task: str = ""
    stream: bool = False
    attempt: int = 1
    probe: bool = False
    ladder: str = ""
    rung: int = 0

    def encode(self) -> dict[str, Any]:
        return {
            "v": EVENT_VERSION,
            "k": self.KIND,
            "key": self.key,
            "at": self.at,
            "failure": self.failure.value if self.failure else "",
            "latency_s": self.latency_s,
            "output_tokens": self.output_tokens,
            "task": self.task,
            "stream": self.stream,
            "attempt": self.attempt,
            "probe": self.probe,
            "ladder": self.ladder,
            "rung": self.rung,
        }

    @classmethod
    def decode(cls, event: Mapping[str, object]) -> Observation:
        k = "obs"
        latency = f.optional_number(event, "latency_s", k)
        if latency is not None and latency < 0:
            raise f.ContractError(f"{k}.latency_s: negative")
        return cls(
            key=f.text(event, "key", k),
            at=f.number(event, "at", k),
            failure=f.optional_member(event, "failure", Failure, k),
            latency_s=latency,
            output_tokens=f.optional_count(event, "output_tokens", k, _MAX_TOKENS),
            task=f.text(event, "task", k),
            stream=f.flag(event, "stream", k),
            attempt=f.count(event, "attempt", k, 1_000),
            probe=f.flag(event, "probe", k),
            ladder=f.text(event, "ladder", k),
            rung=f.count(event, "rung", k, 1_000),
        )


@dataclass(frozen=True, slots=True)
class QuotaSignal:
    """A provider said this endpoint has (next to) no requests left until `until`."""

    KIND = "quota"

    key: str
    until: float  # wall clock

    def encode(self) -> dict[str, Any]:
        return {"v": EVENT_VERSION, "k": self.KIND, "key": self.key, "until": self.until}

    @classmethod
    def decode(cls, event: Mapping[str, object]) -> QuotaSignal:
        return cls(key=f.text(event, "key", "quota"), until=f.number(event, "until", "quota"))


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A replica saw a score no impact class accepts and opened the circuit: the others follow."""

    KIND = "abandon"

    key: str
    at: float
    score: float
    reason: Failure

    def encode(self) -> dict[str, Any]:
        return {
            "v": EVENT_VERSION,
            "k": self.KIND,
            "key": self.key,
            "at": self.at,
            "score": self.score,
            "reason": self.reason.value,
        }

    @classmethod
    def decode(cls, event: Mapping[str, object]) -> Abandoned:
        k = "abandon"
        return cls(
            key=f.text(event, "key", k),
            at=f.number(event, "at", k),
            score=f.number(event, "score", k),
            reason=f.member(event, "reason", Failure, k),
        )


@dataclass(frozen=True, slots=True)
class RequestsDecided:
    """How many requests a replica decided since its last such event (the retry budget's base)."""

    KIND = "req"

    at: float
    count: int

    def encode(self) -> dict[str, Any]:
        return {"v": EVENT_VERSION, "k": self.KIND, "at": self.at, "count": self.count}

    @classmethod
    def decode(cls, event: Mapping[str, object]) -> RequestsDecided:
        return cls(at=f.number(event, "at", "req"), count=f.count(event, "count", "req", 1_000_000))


@dataclass(frozen=True, slots=True)
class CircuitChanged:
    """A replica's circuit moved (for dashboards, logs and the prober; boards derive their own)."""

    KIND = "circuit"

    key: str
    at: float
    source: str
    target: str
    reason: str

    def encode(self) -> dict[str, Any]:
        return {
            "v": EVENT_VERSION,
            "k": self.KIND,
            "key": self.key,
            "at": self.at,
            "from": self.source,
            "to": self.target,
            "reason": self.reason,
        }

    @classmethod
    def decode(cls, event: Mapping[str, object]) -> CircuitChanged:
        k = "circuit"
        source, target = f.text(event, "from", k), f.text(event, "to", k)
        if source not in _CIRCUIT_STATES or target not in _CIRCUIT_STATES:
            raise f.ContractError(f"{k}: unknown circuit state {source!r} -> {target!r}")
        return cls(
            key=f.text(event, "key", k),
            at=f.number(event, "at", k),
            source=source,
            target=target,
            reason=f.text(event, "reason", k),
        )


@dataclass(frozen=True, slots=True)
class ProbeClaim:
    """A prober is about to probe an endpoint: every prober on the bus resets its timer for it,
    and of two claims made at once the earlier (by time, then by prober) probes."""

    KIND = "probe"

    key: str
    at: float
    by: str  # the prober's bus origin

    def encode(self) -> dict[str, Any]:
        return {"v": EVENT_VERSION, "k": self.KIND, "key": self.key, "at": self.at, "by": self.by}

    @classmethod
    def decode(cls, event: Mapping[str, object]) -> ProbeClaim:
        k = "probe"
        return cls(key=f.text(event, "key", k), at=f.number(event, "at", k), by=f.text(event, "by", k))


@dataclass(frozen=True, slots=True)
class Spent:
    """What one try cost a tenant (tokens in and out, at its rung's price): every replica's
    budget ledger counts every replica's spend (T4)."""

    KIND = "spent"

    tenant: str
    at: float
    tokens: int
    cost: float

    def encode(self) -> dict[str, Any]:
        return {"v": EVENT_VERSION, "k": self.KIND, "tenant": self.tenant, "at": self.at, "tokens": self.tokens,
                "cost": self.cost}  # fmt: skip

    @classmethod
    def decode(cls, event: Mapping[str, object]) -> Spent:
        k = "spent"
        cost = f.number(event, "cost", k)
        if cost < 0:
            raise f.ContractError(f"{k}.cost: negative")
        return cls(
            tenant=f.text(event, "tenant", k),
            at=f.number(event, "at", k),
            tokens=f.count(event, "tokens", k, _MAX_TOKENS),
            cost=cost,
        )


BusEvent = Observation | QuotaSignal | Abandoned | RequestsDecided | CircuitChanged | ProbeClaim | Spent
_EventType = (
    type[Observation]
    | type[QuotaSignal]
    | type[Abandoned]
    | type[RequestsDecided]
    | type[CircuitChanged]
    | type[ProbeClaim]
    | type[Spent]
)
_KINDS: dict[str, _EventType] = {
    kind.KIND: kind
    for kind in (Observation, QuotaSignal, Abandoned, RequestsDecided, CircuitChanged, ProbeClaim, Spent)
}


def decode_event(event: Mapping[str, object]) -> BusEvent:
    """Any bus event from its JSON object; ContractError for anything else."""
    f.version(event, "event", EVENT_VERSION)
    kind = event.get("k")
    decoder = _KINDS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise f.ContractError(f"event: unknown kind {kind!r}")
    return decoder.decode(event)
