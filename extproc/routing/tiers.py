"""Which tier serves each tenant's task class, as one worker has seen it (T2 notices): a served
answer in, a change out — from the tier it was served at before (tier 0 when it had none)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_WATCHED = 10_000  # (tenant, task) pairs remembered; the least recently served go first


@dataclass(frozen=True, slots=True)
class TierChange:
    tenant: str
    task: str
    previous: int
    tier: int
    at: float
    served_by: str
    # Where the previous answer came from (ladder, rung), when this watch saw it: a recovery's
    # audit record names the rung it came back from.
    previous_rung: tuple[str, int] | None = None

    @property
    def direction(self) -> str:
        return "degraded" if self.tier > self.previous else "recovered"


class TierWatch:
    def __init__(self) -> None:
        self._tiers: OrderedDict[tuple[str, str], tuple[int, tuple[str, int] | None]] = OrderedDict()

    def served(
        self, tenant: str, task: str, tier: int, at: float, served_by: str, rung: tuple[str, int] | None = None
    ) -> TierChange | None:
        """Note an answer served at `tier` (by `rung`, ladder and index); the change, when the
        tier differs from the last."""
        key = (tenant, task)
        previous, previous_rung = self._tiers.get(key, (0, None))
        self._tiers[key] = (tier, rung)
        self._tiers.move_to_end(key)
        if len(self._tiers) > MAX_WATCHED:
            self._tiers.popitem(last=False)
        if tier == previous:
            return None
        return TierChange(tenant, task, previous, tier, at, served_by, previous_rung)
