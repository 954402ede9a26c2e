"""A degraded answer kept for its re-run on recovery (E3): the record that crosses from the
worker that served it below tier 0 to the review store, and from the store to `rungway up`'s
re-runner. It carries the request and the answer as the client had them, never a credential
(the re-run is authenticated as Rungway, on the tenant's behalf).

Stored as a JSON header (one encode/decode pair, versioned, strict) beside the two bodies.
Decoding raises ContractError on anything missing, mistyped or of another version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import fields as f
from .dialect import Dialect
from .impact import Impact

REVIEW_VERSION = 1
_K = "degraded answer"


@dataclass(frozen=True, slots=True)
class DegradedAnswer:
    id: str
    tenant: str
    task: str
    impact: Impact
    dialect: Dialect  # the client's
    path: str
    model: str  # as the client asked
    headers: tuple[tuple[str, str], ...]  # what the re-run must carry again (anthropic-version, -beta)
    ladder: str
    rung: int  # the rung that served it
    tier: int
    served_by: str  # provider/model
    reason: str  # why it was not the primary's (x-rungway-reason)
    policy: str  # the revision it was served under
    request_id: str
    prompt_hash: str  # SHA-256 of the request body (what the audit trail names it by)
    kept_at: float  # wall clock
    request: bytes  # the client's request body
    answer: bytes  # the answer's body as the client got it (its dialect)

    def encode(self) -> str:
        return json.dumps(
            {
                "v": REVIEW_VERSION,
                "id": self.id,
                "tenant": self.tenant,
                "task": self.task,
                "impact": self.impact.value,
                "dialect": self.dialect.value,
                "path": self.path,
                "model": self.model,
                "headers": [list(h) for h in self.headers],
                "ladder": self.ladder,
                "rung": self.rung,
                "tier": self.tier,
                "served_by": self.served_by,
                "reason": self.reason,
                "policy": self.policy,
                "request_id": self.request_id,
                "prompt_hash": self.prompt_hash,
                "kept_at": self.kept_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str, request: bytes, answer: bytes) -> DegradedAnswer:
        try:
            raw = json.loads(text)
        except ValueError:
            raise f.ContractError(f"{_K}: not JSON") from None
        if not isinstance(raw, dict):
            raise f.ContractError(f"{_K}: not an object")
        f.version(raw, _K, REVIEW_VERSION)
        headers = raw.get("headers")
        if not isinstance(headers, list) or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(p, str) for p in h) for h in headers
        ):
            raise f.ContractError(f"{_K}.headers: {headers!r} is not a list of name/value pairs")
        return cls(
            id=f.text(raw, "id", _K),
            tenant=f.text(raw, "tenant", _K),
            task=f.text(raw, "task", _K),
            impact=f.member(raw, "impact", Impact, _K),
            dialect=f.member(raw, "dialect", Dialect, _K),
            path=f.text(raw, "path", _K),
            model=f.text(raw, "model", _K),
            headers=tuple((h[0], h[1]) for h in headers),
            ladder=f.text(raw, "ladder", _K),
            rung=f.count(raw, "rung", _K, 1000),
            tier=f.count(raw, "tier", _K, 4),
            served_by=f.text(raw, "served_by", _K),
            reason=f.text(raw, "reason", _K),
            policy=f.text(raw, "policy", _K),
            request_id=f.text(raw, "request_id", _K),
            prompt_hash=f.text(raw, "prompt_hash", _K),
            kept_at=f.number(raw, "kept_at", _K),
            request=request,
            answer=answer,
        )
