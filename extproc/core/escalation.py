"""An escalated request (E2): what the worker that suspended it records beside the task (why,
the rungs it went through, the policy revision, the candidate answer), and what a person
decided about it. Both cross processes through the store (worker → supervisor's admin API and
webhook), as JSON with one encode/decode pair each, versioned and strict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import fields as f
from .fields import ContractError
from .impact import Impact
from .task import json_record

KIND = "escalation record"  # names the record in a ContractError
ESCALATION_VERSION = 1


class Review(StrEnum):
    """What a person may decide about an escalated request."""

    APPROVE = "approve"  # the candidate answer stands (or, with none, the request is replayed as it is)
    REDIRECT = "redirect"  # replayed through Envoy pinned to one rung of its ladder
    REJECT = "reject"  # the client gets a clear error


@dataclass(frozen=True, slots=True)
class Step:
    """One rung the request was on before it was suspended, and how that try ended."""

    rung: int
    outcome: str  # a failure class, or "served"


@dataclass(frozen=True, slots=True)
class Escalation:
    id: str  # the task id the client polls
    tenant: str
    task: str
    impact: Impact
    ladder: str
    rung: int  # the rung whose answer is the candidate (or whose answer broke the contract)
    tier: int
    served_by: str  # provider/model of that rung
    reasons: tuple[str, ...]  # the signals that fired: tier, score, contract, logprob
    history: tuple[Step, ...]
    policy: str  # the revision it was decided under
    request_id: str
    prompt_hash: str
    at: float  # wall clock
    score: float | None = None  # the ladder's primary's health score, when the rule reads it
    mean_logprob: float | None = None
    has_candidate: bool = False

    def encode(self) -> str:
        return json.dumps(
            {
                "v": ESCALATION_VERSION,
                "id": self.id,
                "tenant": self.tenant,
                "task": self.task,
                "impact": self.impact.value,
                "ladder": self.ladder,
                "rung": self.rung,
                "tier": self.tier,
                "served_by": self.served_by,
                "reasons": list(self.reasons),
                "history": [[s.rung, s.outcome] for s in self.history],
                "policy": self.policy,
                "request_id": self.request_id,
                "prompt_hash": self.prompt_hash,
                "at": self.at,
                "score": self.score,
                "mean_logprob": self.mean_logprob,
                "has_candidate": self.has_candidate,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> Escalation:
        raw = json_record(text, ESCALATION_VERSION, "escalation")
        try:
            return cls(
                id=f.text(raw, "id", KIND),
                tenant=f.text(raw, "tenant", KIND),
                task=f.text(raw, "task", KIND),
                impact=Impact(f.text(raw, "impact", KIND)),
                ladder=f.text(raw, "ladder", KIND),
                rung=f.count(raw, "rung", KIND),
                tier=f.count(raw, "tier", KIND),
                served_by=f.text(raw, "served_by", KIND),
                reasons=tuple(_strings(raw, "reasons")),
                history=_history(raw),
                policy=f.text(raw, "policy", KIND),
                request_id=f.text(raw, "request_id", KIND),
                prompt_hash=f.text(raw, "prompt_hash", KIND),
                at=f.number(raw, "at", KIND),
                score=f.optional_number(raw, "score", KIND),
                mean_logprob=f.optional_number(raw, "mean_logprob", KIND),
                has_candidate=f.flag(raw, "has_candidate", KIND),
            )
        except ValueError as exc:
            raise ContractError(f"escalation: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.encode())
        del out["v"]
        out["history"] = [{"rung": s.rung, "outcome": s.outcome} for s in self.history]
        return out


@dataclass(frozen=True, slots=True)
class Resolution:
    """A person's decision: who, why, when, and for a redirect the rung (an index of the
    escalation's ladder)."""

    action: Review
    by: str
    reason: str
    at: float
    rung: int | None = None

    def __post_init__(self) -> None:
        if not self.by:
            raise ContractError("a resolution says who decided: 'by'")
        if (self.action is Review.REDIRECT) != (self.rung is not None):
            raise ContractError("a redirect, and only a redirect, names a rung")

    def encode(self) -> str:
        return json.dumps(
            {
                "v": ESCALATION_VERSION,
                "action": self.action.value,
                "by": self.by,
                "reason": self.reason,
                "at": self.at,
                "rung": self.rung,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> Resolution:
        raw = json_record(text, ESCALATION_VERSION, "resolution")
        try:
            rung = raw.get("rung")
            if rung is not None and (not isinstance(rung, int) or isinstance(rung, bool) or rung < 0):
                raise ContractError(f"resolution.rung: {rung!r} is not a rung index")
            return cls(
                Review(f.text(raw, "action", KIND)),
                f.text(raw, "by", KIND),
                f.text(raw, "reason", KIND),
                f.number(raw, "at", KIND),
                rung,
            )
        except ValueError as exc:
            raise ContractError(f"resolution: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.encode())
        del out["v"]
        return out


def _strings(raw: dict[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ContractError(f"escalation.{key}: {value!r} is not a list of strings")
    return value


def _history(raw: dict[str, Any]) -> tuple[Step, ...]:
    value = raw.get("history")
    if not isinstance(value, list) or not all(
        isinstance(s, list)
        and len(s) == 2
        and isinstance(s[0], int)
        and not isinstance(s[0], bool)
        and s[0] >= 0
        and isinstance(s[1], str)
        for s in value
    ):
        raise ContractError(f"escalation.history: {value!r} is not a list of [rung, outcome] pairs")
    return tuple(Step(s[0], s[1]) for s in value)
