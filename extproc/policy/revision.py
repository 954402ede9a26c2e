"""Policy revisions (T1): which policy a request was decided under, and how a new one takes over.

A revision's stamp is the file's `version` plus a hash of the validated content, so an edit that
forgets to bump `version` still shows, and a comment-only edit changes nothing. A running
sidecar holds the current revision and a few previous ones (`History`): a request keeps the
revision it was decided under until its last try, however many reloads happen meanwhile (up to
KEEP_PREVIOUS of them). Some fields are read only at start (Envoy's listeners, the key store,
the health board and bus): a reload that changes them is refused, naming them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from .load import PolicyError, parse_policy
from .schema import Policy

# Reloads an in-flight request may outlive and still finish under its own revision: a request
# lives at most route_timeout_s, and reloads come seconds apart at the very least.
KEEP_PREVIOUS = 3
HISTORY_FORMAT = 1

# Fields read once, at start: changing one needs `rungway up` restarted.
START_ONLY: tuple[tuple[str, ...], ...] = (
    ("clients", "auth"),  # Envoy's decide filter asks for the peer address only in trusted_header mode
    ("clients", "key_store"),
    ("max_body_bytes",),  # Envoy's listener buffer limit
    ("health",),  # the health board, retry budget and bus are built from it
    ("approvals",),  # the approvals file a worker follows
    ("shadow",),  # the shadow caller is built from it
    ("review",),  # the review store the workers keep degraded answers in, and the re-runner
    ("escalation",),  # the workers' escalation store and the pod's webhook desk
)


def start_only_changes(old: Policy, new: Policy) -> list[str]:
    """The start-only fields `new` changes, as dotted names."""
    changed = []
    for path in START_ONLY:
        a: Any = old
        b: Any = new
        for part in path:
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            changed.append(".".join(path))
    return changed


@dataclass(frozen=True)
class History:
    """The current revision first, then up to KEEP_PREVIOUS earlier ones, newest first."""

    current: Policy
    previous: tuple[Policy, ...] = ()

    def advance(self, policy: Policy) -> History:
        """`policy` current; the current one kept for requests decided under it."""
        if policy.stamp == self.current.stamp:
            return self
        kept = tuple(p for p in (self.current, *self.previous) if p.stamp != policy.stamp)
        return History(policy, kept[:KEEP_PREVIOUS])

    def all(self) -> tuple[Policy, ...]:
        return (self.current, *self.previous)

    def get(self, policy_stamp: str) -> Policy | None:
        for policy in self.all():
            if policy.stamp == policy_stamp:
                return policy
        return None

    def encode(self) -> str:
        """What `rungway up` hands its workers (JSON; the policies' content, never a secret:
        credentials are where to read a key, not the key)."""
        return json.dumps(
            {
                "format": HISTORY_FORMAT,
                "revisions": [{"stamp": p.stamp, "policy": p.model_dump(mode="json")} for p in self.all()],
            }
        )

    @classmethod
    def decode(cls, text: str) -> History:
        """Raises PolicyError for anything that is not a history this version wrote."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise PolicyError("policy history", [f"not JSON: {exc}"]) from None
        if not isinstance(raw, dict) or raw.get("format") != HISTORY_FORMAT or not raw.get("revisions"):
            raise PolicyError("policy history", [f"not a format {HISTORY_FORMAT} policy history"])
        policies = []
        for entry in raw["revisions"]:
            policy = parse_policy(entry.get("policy"), "policy history")
            if policy.stamp != entry.get("stamp"):
                raise PolicyError("policy history", [f"revision {entry.get('stamp')!r} does not match its content"])
            policies.append(policy)
        return cls(policies[0], tuple(policies[1:]))


class ReloadOutcome(StrEnum):
    APPLIED = "applied"  # a new revision serves
    UNCHANGED = "unchanged"  # the files changed, the validated content did not
    REJECTED = "rejected"  # invalid, or a start-only field changed: the last good one serves on


@dataclass(frozen=True)
class PolicyReloaded:
    """One reload attempt's outcome: logged as one line, counted, shown in /status, and the
    record an audit trail takes (old and new revision, why not)."""

    at: float
    outcome: ReloadOutcome
    old: str  # the stamp serving before
    new: str | None  # the stamp serving after an applied reload; None otherwise
    source: str
    problems: tuple[str, ...] = ()
    # Applied only: file write to Envoy and every worker serving it, and its two steps (Envoy
    # applying the new resources; the workers taking the new revision).
    took_s: float | None = None
    envoy_s: float | None = None
    workers_s: float | None = None
    kind: Literal["policy_reloaded"] = "policy_reloaded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.kind,
            "at": self.at,
            "outcome": self.outcome.value,
            "old": self.old,
            "new": self.new,
            "source": self.source,
            "problems": list(self.problems),
            "took_s": self.took_s,
            "envoy_s": self.envoy_s,
            "workers_s": self.workers_s,
        }
