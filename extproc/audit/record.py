"""One audit record: what was decided, for whom, from which rung to which, under which policy.

The prompt never appears in clear: a record carries the SHA-256 of the request body it was
about (`prompt_hash`), which proves which request it was to whoever holds the request, and
tells nobody else what it said.

A record's line is canonical JSON (sorted keys, no spaces, UTF-8) of everything but its hash,
with the hash appended as the last member: the bytes hashed are a function of the record alone,
so a verifier recomputes them (and the whole line) from the parsed line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Detail = dict[str, str | int | float | bool]


class Kind(StrEnum):
    HOP = "hop"  # a request moved from one rung to another (a failed try, or decide skipping a rung)
    TRIP = "trip"  # a try failed (by failure class)
    TIER_CHANGE = "tier_change"  # an answer was served below tier 0, or degraded (tools stripped), or recovered
    RERUN = "rerun"  # a degraded answer was re-run on its tier-0 rung after recovery (E3); hashes of both
    RESCUE = "rescue"  # a stream cut after its first token was (or was not) completed by another rung
    TOOL_MODE = "tool_mode"  # a rung's tool mode took tools away from the request (T5)
    TRIM = "trim"  # the conversation's middle was left out to fit a rung's window (F6)
    REFUSED = "refused"  # no rung was permitted to serve the request (not_permitted, no rung)
    EXHAUSTED = "exhausted"  # every rung the request could use failed: the client got the failure
    POLICY_RELOAD = "policy_reload"  # the serving policy changed version
    DEFERRAL = "deferral"  # a request deferred (202, or refused: queue full / store down), or a replay's outcome
    APPROVAL = "approval"  # an operator's approval granted, revoked or expired (T2)
    TORN_TAIL = "torn_tail"  # the log's writer found (and cut) a partly written last line at start
    RETENTION = "retention"  # the writer deleted segments older than the policy keeps
    ESCALATED = "escalated"  # an answer was suspended for a person's decision (E2)
    APPROVED = "escalation_approved"  # a person approved it (the candidate answer, or a replay)
    REDIRECTED = "escalation_redirected"  # a person sent it to one rung of its ladder
    REJECTED = "escalation_rejected"  # a person rejected it: the client gets an error


class RecordError(ValueError):
    """A line that is not an audit record (bad JSON, a missing or mistyped field)."""


@dataclass(frozen=True, slots=True)
class RungRef:
    """A rung as a record names it."""

    ladder: str
    rung: int
    provider: str
    model: str
    tier: int

    def encode(self) -> dict[str, Any]:
        return {
            "ladder": self.ladder,
            "rung": self.rung,
            "provider": self.provider,
            "model": self.model,
            "tier": self.tier,
        }

    @classmethod
    def decode(cls, raw: object) -> RungRef | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise RecordError(f"a rung must be an object, not {type(raw).__name__}")
        return cls(
            ladder=_text(raw, "ladder"),
            rung=_int(raw, "rung"),
            provider=_text(raw, "provider"),
            model=_text(raw, "model"),
            tier=_int(raw, "tier"),
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """A record's content, before the chain gives it a sequence number and hashes."""

    at: float  # wall-clock seconds
    kind: Kind
    tenant: str = ""
    task: str = ""
    trigger: str = ""  # the failure class or reason that caused it
    source: RungRef | None = None
    target: RungRef | None = None
    policy: str = ""  # the policy version it was decided under
    request_id: str = ""  # Envoy's x-request-id
    prompt_hash: str = ""  # SHA-256 of the request body, hex
    tokens: int | None = None  # output tokens, where known
    cost: float | None = None  # in the policy's cost units, where known
    detail: Detail = field(default_factory=dict)

    def encode(self) -> dict[str, Any]:
        return {
            "at": float(self.at),
            "kind": self.kind.value,
            "tenant": self.tenant,
            "task": self.task,
            "trigger": self.trigger,
            "source": self.source.encode() if self.source else None,
            "target": self.target.encode() if self.target else None,
            "policy": self.policy,
            "request_id": self.request_id,
            "prompt_hash": self.prompt_hash,
            "tokens": self.tokens,
            "cost": float(self.cost) if self.cost is not None else None,
            "detail": dict(self.detail),
        }

    @classmethod
    def decode(cls, raw: Mapping[str, Any]) -> Entry:
        at = raw.get("at")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise RecordError("at must be a number")
        try:
            kind = Kind(str(raw.get("kind")))
        except ValueError:
            raise RecordError(f"unknown kind {raw.get('kind')!r}") from None
        tokens, cost, detail = raw.get("tokens"), raw.get("cost"), raw.get("detail")
        if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool)):
            raise RecordError("tokens must be an integer or null")
        if cost is not None and (not isinstance(cost, int | float) or isinstance(cost, bool)):
            raise RecordError("cost must be a number or null")
        if not isinstance(detail, dict) or not all(isinstance(v, str | int | float | bool) for v in detail.values()):
            raise RecordError("detail must be an object of plain values")
        return cls(
            at=float(at),
            kind=kind,
            tenant=_text(raw, "tenant"),
            task=_text(raw, "task"),
            trigger=_text(raw, "trigger"),
            source=RungRef.decode(raw.get("source")),
            target=RungRef.decode(raw.get("target")),
            policy=_text(raw, "policy"),
            request_id=_text(raw, "request_id"),
            prompt_hash=_text(raw, "prompt_hash"),
            tokens=tokens,
            cost=float(cost) if cost is not None else None,
            detail=detail,
        )

    # ---- records the runtime makes (the filters build theirs from a Decision) ---------------

    @classmethod
    def policy_reload(cls, at: float, old_version: str, new_version: str, *, trigger: str = "reload") -> Entry:
        return cls(at, Kind.POLICY_RELOAD, policy=new_version, trigger=trigger, detail={"previous": old_version})

    @classmethod
    def deferral_outcome(cls, at: float, tenant: str, task: str, outcome: str, detail: Detail) -> Entry:
        """What the pod's drainer made of deferred tasks: answered, duplicate, expired (and
        escalation_expired: escalated tasks no person decided on in time)."""
        return cls(at, Kind.DEFERRAL, tenant=tenant, task=task, trigger=outcome, detail=detail)

    @classmethod
    def approval(cls, at: float, change: str, tenant: str, task: str | None, detail: Detail) -> Entry:
        """An approval that came into force (granted), was withdrawn (revoked) or ran out (expired)."""
        return cls(at, Kind.APPROVAL, tenant=tenant, task=task or "", trigger=change, detail=detail)

    @classmethod
    def torn_tail(cls, at: float, segment: str, torn: bytes) -> Entry:
        """The writer cut `torn` (a partly written last line) from `segment` before appending."""
        return cls(
            at,
            Kind.TORN_TAIL,
            trigger="restart",
            detail={"segment": segment, "torn_bytes": len(torn), "torn_sha256": hashlib.sha256(torn).hexdigest()},
        )

    @classmethod
    def retention(cls, at: float, pruned_before: int, segments: int) -> Entry:
        """Records before seq `pruned_before` (in `segments` files) are deleted by policy."""
        return cls(
            at, Kind.RETENTION, trigger="retention", detail={"pruned_before": pruned_before, "segments": segments}
        )


@dataclass(frozen=True, slots=True)
class Record:
    """An entry in its place in a chain: its sequence number, the hash of the record before it
    (GENESIS for the first) and its own hash, over everything else it says."""

    seq: int
    prev: str
    hash: str
    entry: Entry

    @staticmethod
    def body(seq: int, prev: str, entry: Entry) -> bytes:
        """The canonical encoding of everything a record says but its hash: what is hashed."""
        return canonical({"seq": seq, "prev": prev, **entry.encode()})

    @classmethod
    def make(cls, seq: int, prev: str, entry: Entry) -> Record:
        return cls(seq, prev, hashlib.sha256(cls.body(seq, prev, entry)).hexdigest(), entry)

    def line(self) -> bytes:
        """The record as one line of the log, newline included: its body with the hash added
        as the last member (one encoding per record, for the writer's sake)."""
        return _with_hash(self.body(self.seq, self.prev, self.entry), self.hash)

    @classmethod
    def parse(cls, line: bytes) -> Record:
        """A record from its line (without checking its hash: `verify` does)."""
        try:
            raw = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise RecordError("not a JSON line") from None
        if not isinstance(raw, dict):
            raise RecordError("not a JSON object")
        seq = raw.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise RecordError("seq must be a non-negative integer")
        return cls(seq, _text(raw, "prev"), _text(raw, "hash"), Entry.decode(raw))

    def intact(self, line: bytes) -> bool:
        """`line` is this record's one canonical line, and its hash is the hash of what it says
        (so a change to any byte of the line shows: an added field, a re-spaced value...)."""
        body = self.body(self.seq, self.prev, self.entry)
        return self.hash == hashlib.sha256(body).hexdigest() and line == _with_hash(body, self.hash)


def _with_hash(body: bytes, digest: str) -> bytes:
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'


def canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def prompt_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a string")
    return value


def _int(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordError(f"{name} must be an integer")
    return value
