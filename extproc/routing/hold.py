"""Holding a request for an operator's approval (T2), pure.

A tenant with `approval_beyond_tier` and `approval_wait_s` does not have a request refused at once
when only an approval could serve it: decide holds the request (Envoy waits for its answer) and
re-decides it each time it wakes, under the approvals in force then. The first approval that lets
a rung serve it routes it; at `until` the refusal that says how to approve is sent. A hold never
outlasts the request's route timeout, and a tenant has at most `approval_max_held` requests held
in the pod (the next is refused at once; `HeldCount`, shared by the pod's workers).
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from typing import Any, Final

from ..core import Failure
from ..policy import Policy
from .ladder import NeedBody, Refusal, RequestFeatures, Route, choose, tenant_forbids

# How often a held request re-reads the approvals (the runtime re-reads the file as often).
CHECK_EVERY_S: Final = 0.1
# Envoy waits this much longer than the hold for decide's answer, so that the refusal decide
# sends at `until` always reaches the client, never Envoy's own message-timeout 504.
ENVOY_MARGIN_S: Final = 2.0
# Left of the route timeout for the request itself once a hold ends at the latest.
DEADLINE_MARGIN_S: Final = 1.0


class HoldOutcome(StrEnum):
    ROUTED = "routed"  # an approval came (or the refused rungs recovered) during the hold
    EXPIRED = "expired"  # the wait ran out: refused with how to approve
    GONE = "gone"  # the client went away (or Envoy ended the stream) while held
    FULL = "full"  # the tenant had approval_max_held requests held: refused at once


def awaits_approval(policy: Policy, features: RequestFeatures, refusal: Refusal) -> bool:
    """Whether an approval (as far as the tenant's lowest tier) would give a refused request a
    rung it may not use now, one that could serve it: only then is waiting for one worth anything."""
    rules = policy.tenant(features.tenant)
    ladder = policy.ladder_for(features.model, features.task)
    if refusal.failure is not Failure.NOT_PERMITTED or rules.approval_beyond_tier is None or ladder is None:
        return False
    lowest = rules.lowest_tier_for(features.task)

    def forbids(index: int, approved: int | None) -> bool:
        return tenant_forbids(policy, features.tenant, features.task, ladder, index, approved) is not None

    rungs = range(len(policy.ladders[ladder]))
    added = {i for i in rungs if forbids(i, features.approved_tier) and not forbids(i, lowest)}
    approved = choose(policy, replace(features, approved_tier=lowest))
    if isinstance(approved, Route):
        return bool(added.intersection(approved.rungs))
    return bool(added) and isinstance(approved, NeedBody)


def hold_until(policy: Policy, tenant: str, now: float) -> float | None:
    """Until when (on the clock `now` is read from) a request of `tenant` that awaits an approval
    is held, or None to refuse it now: the tenant's policy does not hold, or its route timeout
    leaves no time to wait."""
    wait = policy.tenant(tenant).approval_wait_s
    if wait is None:
        return None
    if policy.route_timeout_s > 0:  # 0: no route timeout
        wait = min(wait, policy.route_timeout_s - DEADLINE_MARGIN_S)
    return now + wait if wait > 0 else None


def holds_full(policy: Policy, tenant: str, held: int) -> bool:
    """Whether `held` requests of the tenant held already leave no room for one more."""
    return held >= policy.tenant(tenant).approval_max_held


def remaining_timeout_s(policy: Policy, held_s: float) -> float | None:
    """The route timeout a request held for `held_s` has left (Envoy's route timer starts only
    once decide answers), or None when the policy sets no route timeout."""
    if policy.route_timeout_s <= 0:
        return None
    return max(policy.route_timeout_s - held_s, 0.001)  # spent: Envoy answers 504 at once


_HELD_VERSION: Final = 1


class HeldCount:
    """Requests held for an approval, by the worker holding them (`owner`, its pid) and tenant:
    one pod's count, shared by its workers like the capacity ledger (runtime/slots.py), so that
    `approval_max_held` holds for the pod. Commands move state; queries never do."""

    def __init__(self, counts: dict[tuple[int, str], int] | None = None) -> None:
        self._counts: dict[tuple[int, str], int] = dict(counts or {})

    # ---- commands ----------------------------------------------------------------------------

    def take(self, tenant: str, owner: int = 0) -> None:
        self._counts[owner, tenant] = self._counts.get((owner, tenant), 0) + 1

    def free(self, tenant: str, owner: int = 0) -> None:
        left = self._counts.get((owner, tenant), 0) - 1
        if left > 0:
            self._counts[owner, tenant] = left
        else:
            self._counts.pop((owner, tenant), None)

    def forget(self, owners: set[int]) -> None:
        """Only these workers are alive: the holds of any other ended with it."""
        self._counts = {key: n for key, n in self._counts.items() if key[0] in owners}

    # ---- queries -----------------------------------------------------------------------------

    def owners(self) -> set[int]:
        return {owner for owner, _ in self._counts}

    def held(self, tenant: str) -> int:
        return sum(n for (_, t), n in self._counts.items() if t == tenant)

    def snapshot(self) -> dict[str, int]:
        """Held by tenant, for /status and tests."""
        out: dict[str, int] = {}
        for (_, tenant), n in sorted(self._counts.items()):
            out[tenant] = out.get(tenant, 0) + n
        return out

    # ---- one encode/decode pair ---------------------------------------------------------------

    def encode(self) -> dict[str, Any]:
        return {"v": _HELD_VERSION, "held": [[o, t, n] for (o, t), n in sorted(self._counts.items())]}

    @classmethod
    def decode(cls, raw: Any) -> HeldCount:
        """Raises ValueError on anything that is not an encoded count of this version."""
        try:
            if raw["v"] != _HELD_VERSION:
                raise ValueError(f"held count version {raw['v']!r}, expected {_HELD_VERSION}")
            return cls({(int(o), str(t)): int(n) for o, t, n in raw["held"]})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not an encoded held count: {exc!r}") from None
