"""Approvals (T2): a tenant whose policy says tiers beyond N need an operator's approval is
served beyond N only while an approval is in force — for a tier, a task class or all of them,
until a time. The store is a small JSON file (runtime/approvals.py reads and edits it); this is
its pure half: parse, encode, and which tier is approved now."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

_VERSION = 1
MAX_APPROVALS = 10_000


class ApprovalError(ValueError):
    """An approvals file or entry that cannot be trusted: refused whole, never half-read."""


@dataclass(frozen=True, slots=True)
class Approval:
    tenant: str
    tier: int  # the tenant may be served down to this tier
    until: float  # wall time
    task: str | None = None  # None: every task class
    by: str = ""
    reason: str = ""
    at: float = 0.0  # when it was granted

    def covers(self, tenant: str, task: str, now: float) -> bool:
        return self.tenant == tenant and (self.task is None or self.task == task) and now < self.until

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "tier": self.tier,
            "until": self.until,
            "task": self.task,
            "by": self.by,
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Approval:
        if not isinstance(raw, dict) or set(raw) - {"tenant", "tier", "until", "task", "by", "reason", "at"}:
            raise ApprovalError(f"an approval must be an object of known fields, not {str(raw)[:80]!r}")
        tenant, tier, until = raw.get("tenant"), raw.get("tier"), raw.get("until")
        task, by, reason, at = raw.get("task"), raw.get("by", ""), raw.get("reason", ""), raw.get("at", 0.0)
        if not isinstance(tenant, str) or not tenant:
            raise ApprovalError("an approval needs a tenant")
        if not isinstance(tier, int) or isinstance(tier, bool) or not 0 <= tier <= 3:
            raise ApprovalError(f"approval for {tenant!r}: tier must be 0-3, not {tier!r}")
        if (
            not isinstance(until, int | float)
            or not _number(until)
            or not isinstance(at, int | float)
            or not _number(at)
        ):
            raise ApprovalError(f"approval for {tenant!r}: until and at must be times")
        if task is not None and (not isinstance(task, str) or not task):
            raise ApprovalError(f"approval for {tenant!r}: task must be a task class name or null")
        if not isinstance(by, str) or not isinstance(reason, str):
            raise ApprovalError(f"approval for {tenant!r}: by and reason must be text")
        return cls(tenant, tier, float(until), task, by, reason, float(at))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Approvals:
    entries: tuple[Approval, ...] = ()

    def approved_tier(self, tenant: str, task: str, now: float) -> int | None:
        """The lowest tier (highest number) an approval in force lets the tenant's task reach."""
        tiers = [a.tier for a in self.entries if a.covers(tenant, task, now)]
        return max(tiers) if tiers else None

    def active(self, now: float) -> tuple[Approval, ...]:
        return tuple(a for a in self.entries if now < a.until)

    def granted(self, approval: Approval, now: float) -> Approvals:
        """With `approval`, replacing one for the same tenant and task; expired ones dropped."""
        kept = tuple(a for a in self.active(now) if (a.tenant, a.task) != (approval.tenant, approval.task))
        if len(kept) >= MAX_APPROVALS:
            raise ApprovalError(f"there are {len(kept)} approvals in force already")
        return Approvals((*kept, approval))

    def revoked(self, tenant: str, task: str | None, now: float) -> Approvals:
        """Without the tenant's approval for `task` (None: for every task class, and all of its
        task-specific ones)."""
        return Approvals(
            tuple(a for a in self.active(now) if a.tenant != tenant or (task is not None and a.task != task))
        )

    def encode(self) -> str:
        return json.dumps({"v": _VERSION, "approvals": [a.to_json() for a in self.entries]}, indent=1) + "\n"

    @classmethod
    def parse(cls, text: str) -> Approvals:
        try:
            raw = json.loads(text) if text.strip() else {"v": _VERSION, "approvals": []}
        except ValueError as exc:
            raise ApprovalError(f"the approvals file is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("v") != _VERSION or not isinstance(raw.get("approvals"), list):
            raise ApprovalError(f"the approvals file must be {{'v': {_VERSION}, 'approvals': [...]}}")
        entries = raw["approvals"]
        if len(entries) > MAX_APPROVALS:
            raise ApprovalError(f"the approvals file holds {len(entries)} approvals (at most {MAX_APPROVALS})")
        return cls(tuple(Approval.from_json(e) for e in entries))


def approval(
    tenant: object,
    tier: object,
    for_s: object,
    now: float,
    *,
    task: object = None,
    by: object = "",
    reason: object = "",
) -> Approval:
    """A new approval from now, checked like one read from the file (its fields may come from an
    admin API request: anything wrong is an ApprovalError)."""
    if not isinstance(for_s, int | float) or not _number(for_s) or for_s <= 0:
        raise ApprovalError("an approval lasts a positive number of seconds ('for_s')")
    raw = {"tenant": tenant, "tier": tier, "until": now + for_s, "task": task, "by": by, "reason": reason, "at": now}
    return Approval.from_json(raw)


def approval_changes(
    in_force_before: frozenset[Approval], now_read: Approvals, now: float
) -> tuple[frozenset[Approval], list[tuple[str, Approval]]]:
    """Between two readings of the approvals file: the approvals in force now, and what changed —
    granted (in force now, not before), revoked (in force before, gone from the file with time
    left), expired (in force before, its time up). Whoever edited the file (`rungway approve`,
    the admin API, a hand edit), the audit trail hears it the same way."""
    in_force = frozenset(now_read.active(now))
    changes = [("granted", a) for a in sorted(in_force - in_force_before, key=_order)]
    for gone in sorted(in_force_before - in_force, key=_order):
        changes.append(("expired" if gone.until <= now else "revoked", gone))
    return in_force, changes


def _order(a: Approval) -> tuple[float, str, str]:
    return (a.at, a.tenant, a.task or "")
