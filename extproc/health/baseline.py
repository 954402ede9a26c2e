"""An endpoint's latency baseline: the p95 (and median) of its healthy answers (pure).

The score holds a window's p95 to `latency_slo_factor` x the baseline, so the baseline must be a
p95 too: a mean sits well below a healthy p95 (about half of it for LLM latencies, which are
roughly lognormal), and a healthy endpoint compared with it looks slow. The baseline is the
nearest-rank p95 of the last `HISTORY` healthy answers the board let it learn; the board decides
which (a window late, and never from a window that ended in an alarm).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Final

HISTORY: Final = 500  # answers the p95 is taken over: a p95 of this many moves little by chance
# Below this many answers the p95 is their max: a nearest-rank p95 of twenty rests on the
# second largest, which one time in thirty sits below a healthy p75.
TRUSTED: Final = 40
# A configured baseline is a p95; LLM latencies are roughly lognormal with p95 about 2 x median.
CONFIGURED_MEDIAN_SHARE: Final = 0.5


def nearest_rank(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, nearest-rank: a value that occurred, never interpolated."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Baseline:
    """How long a healthy answer takes: its p95 and median."""

    p95: float
    p50: float

    @classmethod
    def configured(cls, p95: float) -> Baseline:
        return cls(p95, p95 * CONFIGURED_MEDIAN_SHARE)


class LatencyHistory:
    """The last HISTORY healthy latencies the board let teach, kept sorted for their quantiles."""

    __slots__ = ("_arrived", "_sorted", "joined_at", "p50", "p95")

    def __init__(self) -> None:
        self._arrived: deque[float] = deque()
        self._sorted: list[float] = []
        self.joined_at = float("-inf")  # when the latest answer joined (the board thins by time)
        self.p95 = 0.0
        self.p50 = 0.0

    @property
    def n(self) -> int:
        return len(self._arrived)

    def add(self, latency: float, at: float) -> None:
        if len(self._arrived) == HISTORY:
            oldest = self._arrived.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._arrived.append(latency)
        bisect.insort(self._sorted, latency)
        self.joined_at = at
        # Computed here so that reading the baseline (a query, on every try) costs nothing.
        self.p95 = nearest_rank(self._sorted, 0.95) if len(self._sorted) >= TRUSTED else self._sorted[-1]
        self.p50 = nearest_rank(self._sorted, 0.5)

    def __repr__(self) -> str:
        return f"LatencyHistory(p95={self.p95:.3f}, p50={self.p50:.3f}, n={self.n})"
