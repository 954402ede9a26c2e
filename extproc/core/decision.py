"""The messages between the two filters and between the tries of one request.

They travel as Envoy dynamic metadata (a protobuf Struct: strings, doubles, booleans):
- `Decision`: decide → every try's attempt filter (namespace META_DECISION). Also read by the
  router (`routed`) and the access log.
- `Refused`: decide's own answer (`rendered` tells Envoy's local-reply mapper to leave it alone).
- `TripRecord`: one try → the next try of the same request (namespace META_TRIP): Envoy keeps
  dynamic metadata across tries, so what one try learned reaches the next even on another
  worker process.
- `RungAddress`: the config renderer → attempt, as endpoint metadata of each rung's cluster.

Each has one encode/decode pair. Decoding checks every field and raises ContractError on
anything missing, mistyped or of another version: a misspelt key is an error, never a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import fields as f
from .dialect import Dialect
from .failure import Failure
from .impact import Impact

Meta = dict[str, str | float | bool]

DECISION_VERSION = 1
TRIP_VERSION = 1


@dataclass(frozen=True, slots=True)
class Decision:
    """Which rungs serve a request, and what every try needs to know about the request."""

    policy: str  # the version of the policy it was decided under
    ladder: str
    rungs: tuple[int, ...]  # the ordering the aggregate cluster tries
    cluster: str
    tries: int
    tenant: str
    task: str
    impact: Impact
    dialect: Dialect  # the client's
    model: str  # as the client asked
    stream: bool
    include_usage: bool
    body_bytes: int
    skip: Failure | None  # why the ladder's first rung is not serving, if it is not
    canary: bool = False
    probe: bool = False
    response_format: str = ""  # "json_object", "json_schema", "text" or ""
    anthropic_version: str | None = None  # an Anthropic client's, kept for Anthropic rungs
    anthropic_beta: str | None = None
    # When decide routed it (monotonic ms; one host: comparable across worker processes): what
    # is left of the route timeout for a stream rescue. For a request held for an approval, its
    # arrival: the hold spent part of the route timeout (routing/hold.py).
    decided_ms: float = 0.0
    # Sampled for continuous verification: the first try also asks the other rungs (Shadow).
    shadow: bool = False
    # For the audit trail, when it is on: Envoy's x-request-id and the SHA-256 of the body.
    request_id: str | None = None
    prompt_hash: str | None = None
    # A re-run on recovery (E3): its answer goes to Rungway's re-runner alone, and is never kept
    # for review itself.
    rerun: bool = False
    # The tenant's escalation rule may suspend this request's answer (E2): its tries keep the
    # client's body and judge the answer against the rule. Never a stream, a probe, a re-run or
    # a replay (of a deferred task, or after a person's decision).
    escalate: bool = False

    def encode(self) -> Meta:
        out: Meta = {
            "v": DECISION_VERSION,
            "routed": True,
            "policy": self.policy,
            "ladder": self.ladder,
            "rungs": ",".join(map(str, self.rungs)),
            "cluster": self.cluster,
            "tries": self.tries,
            "tenant": self.tenant,
            "task": self.task,
            "impact": self.impact.value,
            "dialect": self.dialect.value,
            "model": self.model,
            "stream": self.stream,
            "include_usage": self.include_usage,
            "body_bytes": self.body_bytes,
            "skip": self.skip.value if self.skip else "",
            "canary": self.canary,
            "probe": self.probe,
            "response_format": self.response_format,
            "decided_ms": self.decided_ms,
            "shadow": self.shadow,
            "rerun": self.rerun,
            "escalate": self.escalate,
        }
        if self.anthropic_version is not None:
            out["anthropic_version"] = self.anthropic_version
        if self.anthropic_beta is not None:
            out["anthropic_beta"] = self.anthropic_beta
        if self.request_id is not None:
            out["request_id"] = self.request_id
        if self.prompt_hash is not None:
            out["prompt_hash"] = self.prompt_hash
        return out

    @classmethod
    def decode(cls, meta: Mapping[str, object]) -> Decision:
        k = "decision"
        f.version(meta, k, DECISION_VERSION)
        if meta.get("routed") is not True:
            raise f.ContractError(f"{k}: not a routed request")
        rungs_text = f.text(meta, "rungs", k)
        try:
            rungs = tuple(int(i) for i in rungs_text.split(","))
        except ValueError:
            raise f.ContractError(f"{k}.rungs: {rungs_text!r} is not a list of rung indexes") from None
        if not rungs or any(i < 0 for i in rungs):
            raise f.ContractError(f"{k}.rungs: {rungs_text!r} is not a list of rung indexes")
        return cls(
            policy=f.text(meta, "policy", k),
            ladder=f.text(meta, "ladder", k),
            rungs=rungs,
            cluster=f.text(meta, "cluster", k),
            tries=f.count(meta, "tries", k, 100),
            tenant=f.text(meta, "tenant", k),
            task=f.text(meta, "task", k),
            impact=f.member(meta, "impact", Impact, k),
            dialect=f.member(meta, "dialect", Dialect, k),
            model=f.text(meta, "model", k),
            stream=f.flag(meta, "stream", k),
            include_usage=f.flag(meta, "include_usage", k),
            body_bytes=f.count(meta, "body_bytes", k),
            skip=f.optional_member(meta, "skip", Failure, k),
            canary=f.flag(meta, "canary", k),
            probe=f.flag(meta, "probe", k),
            response_format=f.text(meta, "response_format", k),
            anthropic_version=f.optional_text(meta, "anthropic_version", k),
            anthropic_beta=f.optional_text(meta, "anthropic_beta", k),
            decided_ms=f.number(meta, "decided_ms", k),
            shadow=f.flag(meta, "shadow", k),
            request_id=f.optional_text(meta, "request_id", k),
            prompt_hash=f.optional_text(meta, "prompt_hash", k),
            rerun=f.flag(meta, "rerun", k),
            escalate=f.flag(meta, "escalate", k),
        )


@dataclass(frozen=True, slots=True)
class Refused:
    """decide answered the request itself (an error in the client's dialect)."""

    tenant: str
    task: str

    def encode(self) -> Meta:
        # `rendered`: Envoy's local-reply mapper must leave this answer as it is.
        return {"v": DECISION_VERSION, "rendered": True, "tenant": self.tenant, "task": self.task}


@dataclass(frozen=True, slots=True)
class PassedThrough:
    """decide sent an authenticated request for another API path straight to one provider."""

    tenant: str
    provider: str

    def encode(self) -> Meta:
        return {"v": DECISION_VERSION, "passthrough": True, "tenant": self.tenant, "provider": self.provider}


@dataclass(frozen=True, slots=True)
class RungAddress:
    """Which rung (and which of its slots) an endpoint is: endpoint metadata of a rung cluster."""

    ladder: str
    rung: int
    slot: int

    def encode(self) -> Meta:
        return {"ladder": self.ladder, "rung": self.rung, "slot": self.slot}

    @classmethod
    def decode(cls, meta: Mapping[str, object]) -> RungAddress:
        k = "rung address"
        return cls(
            ladder=f.text(meta, "ladder", k), rung=f.count(meta, "rung", k, 63), slot=f.count(meta, "slot", k, 63)
        )


@dataclass(frozen=True, slots=True)
class TripRecord:
    """What the latest try of a request left for the next one."""

    attempt: int  # 1-based, as Envoy counts (skipped slots included)
    rung: int
    started_ms: float  # monotonic ms (one host: comparable across worker processes)
    slot: int = 0
    real_tries: int = 1  # tries that reached a provider so far, this one included
    failure: Failure | None = None  # how the latest real try failed, once its answer was judged
    first_failure: Failure | None = None  # why the request left its first rung
    next_rung: int | None = None  # where the next real try must be (set by a judged failure)
    skipped: bool = False  # this slot was skipped: no provider saw it

    def encode(self) -> Meta:
        out: Meta = {
            "v": TRIP_VERSION,
            "attempt": self.attempt,
            "rung": self.rung,
            "slot": self.slot,
            "started_ms": self.started_ms,
            "real_tries": self.real_tries,
            "failure": self.failure.value if self.failure else "",
            "first_failure": self.first_failure.value if self.first_failure else "",
            "skipped": self.skipped,
        }
        if self.next_rung is not None:
            out["next_rung"] = self.next_rung
        return out

    @classmethod
    def decode(cls, meta: Mapping[str, object]) -> TripRecord | None:
        """None when no try has left a record yet (the first try)."""
        if not meta:
            return None
        k = "trip record"
        f.version(meta, k, TRIP_VERSION)
        return cls(
            attempt=f.count(meta, "attempt", k, 100),
            rung=f.count(meta, "rung", k, 63),
            started_ms=f.number(meta, "started_ms", k),
            slot=f.count(meta, "slot", k, 63),
            real_tries=f.count(meta, "real_tries", k, 100),
            failure=f.optional_member(meta, "failure", Failure, k),
            first_failure=f.optional_member(meta, "first_failure", Failure, k),
            next_rung=f.optional_count(meta, "next_rung", k, 63),
            skipped=f.flag(meta, "skipped", k),
        )
