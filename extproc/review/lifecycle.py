"""A kept degraded answer's lifecycle, as data: pending (waiting for its tier-0 rung) →
rerunning (claimed under a lease) → done (the tier-0 answer and the diff kept); a re-run that
was not served by tier 0 goes back to pending with a backoff, and so does one whose lease lapsed
(a re-runner killed mid-call). Every review is deleted `review.ttl_s` after it was kept."""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Final


class ReviewState(StrEnum):
    PENDING = "pending"
    RERUNNING = "rerunning"
    DONE = "done"


TRANSITIONS: Final[frozenset[tuple[ReviewState, ReviewState]]] = frozenset(
    {
        (ReviewState.PENDING, ReviewState.RERUNNING),  # claimed: its tier-0 rung looks healthy
        (ReviewState.RERUNNING, ReviewState.PENDING),  # not served by tier 0: later, with a backoff
        (ReviewState.RERUNNING, ReviewState.DONE),  # the tier-0 answer and the diff
        (ReviewState.PENDING, ReviewState.DONE),  # a lapsed lease's re-run answered after all
    }
)


class IllegalReviewTransition(Exception):  # noqa: N818 - mirrors the circuit's IllegalTransition
    def __init__(self, source: ReviewState, target: ReviewState) -> None:
        super().__init__(f"a review cannot go from {source} to {target}")


def check(source: ReviewState, target: ReviewState) -> None:
    if (source, target) not in TRANSITIONS:
        raise IllegalReviewTransition(source, target)


class Verdict(StrEnum):
    DONE = "done"  # the tier-0 rung answered: keep it and the diff
    RETRY = "retry"  # anything else (an error, a refusal, another rung): re-run later


def rerun_verdict(status: int, tier: str, served_by: str, expected: str) -> Verdict:
    """A re-run counts only as a 200 from the rung it was pinned to (tier 0, `expected`
    provider/model): Rungway's own answers (a refusal, a handoff) and errors are retried."""
    return Verdict.DONE if status == 200 and tier == "0" and served_by == expected else Verdict.RETRY


_FIRST_S = 5.0
_MAX_S = 600.0


def rerun_delay(failures: int, rng: random.Random) -> float:
    """Exponential backoff with jitter (at least half the step), by failed re-runs so far."""
    step = min(_MAX_S, _FIRST_S * 2.0 ** max(0, failures - 1))
    return step / 2 + rng.random() * step / 2
