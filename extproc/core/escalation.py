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

from .fields import ContractError
from .impact import Impact
from .task import _number, _object, _str

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
        raw = _object(text, ESCALATION_VERSION)
        try:
            return cls(
                id=_str(raw, "id"),
                tenant=_str(raw, "tenant"),
                task=_str(raw, "task"),
                impact=Impact(_str(raw, "impact")),
                ladder=_str(raw, "ladder"),
                rung=_int(raw, "rung"),
                tier=_int(raw, "tier"),
                served_by=_str(raw, "served_by"),
                reasons=tuple(_strings(raw, "reasons")),
                history=_history(raw),
                policy=_str(raw, "policy"),
                request_id=_str(raw, "request_id"),
                prompt_hash=_str(raw, "prompt_hash"),
                at=_number(raw, "at"),
                score=_optional_number(raw, "score"),
                mean_logprob=_optional_number(raw, "mean_logprob"),
                has_candidate=_bool(raw, "has_candidate"),
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
        raw = _object(text, ESCALATION_VERSION)
        try:
            rung = raw.get("rung")
            if rung is not None and (not isinstance(rung, int) or isinstance(rung, bool) or rung < 0):
                raise ContractError(f"resolution.rung: {rung!r} is not a rung index")
            return cls(Review(_str(raw, "action")), _str(raw, "by"), _str(raw, "reason"), _number(raw, "at"), rung)
        except ValueError as exc:
            raise ContractError(f"resolution: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.encode())
        del out["v"]
        return out


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ContractError(f"escalation.{key}: {value!r} is not a non-negative integer")
    return value


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise ContractError(f"escalation.{key}: {value!r} is not true or false")
    return value


def _optional_number(raw: dict[str, Any], key: str) -> float | None:
    return None if raw.get(key) is None else _number(raw, key)


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
