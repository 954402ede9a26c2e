"""Trips and hops: what a failed try means for the request (pure).

Each try runs in its own ext_proc stream, possibly on another worker process, so what one try
learned reaches the next through Envoy: dynamic metadata written by the upstream filter in one
try is visible to the next try of the same request (verified on Envoy 1.40). A try that never
reached the filter's response phase (connect failure, reset, per-try timeout) leaves no record
of its failure; the next try infers it from the record's start time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

from ..core import HOP_RULE, Failure, Hop, TripRecord
from ..policy import Policy


class Action(StrEnum):
    HOP = "hop"  # flip the answer to 503: Envoy retries on the next slot
    WAIT = "wait"  # keep the 429: Envoy waits out Retry-After, then retries the same rung
    FINAL = "final"  # this is the client's answer: render the failure in its dialect


@dataclass(frozen=True, slots=True)
class Position:
    """Where a try stands in the request's ladder ordering."""

    ladder: str
    rung: int
    slot: int
    order: tuple[int, ...]
    attempt: int  # 1-based, as Envoy counts
    tries: int

    def rung_attempts(self, policy: Policy) -> int:
        return policy.ladders[self.ladder][self.rung].attempts

    def is_last(self, policy: Policy) -> bool:
        if self.attempt >= self.tries:
            return True
        return self.rung == self.order[-1] and self.slot >= self.rung_attempts(policy) - 1

    def next_is_same_rung(self, policy: Policy) -> bool:
        return self.slot < self.rung_attempts(policy) - 1 and not self.is_last(policy)

    def later_rungs(self) -> tuple[int, ...]:
        return self.order[self.order.index(self.rung) + 1 :] if self.rung in self.order else ()


def after_failure(policy: Policy, position: Position, failure: Failure, retry_after_s: float | None) -> Action:
    rule = HOP_RULE[failure]
    if failure is Failure.SAFETY_BLOCK and policy.hop_on_safety_block:
        rule = Hop.NEXT_RUNG
    if rule is Hop.PROPAGATE or position.is_last(policy):
        return Action.FINAL
    if rule is Hop.LARGER_CONTEXT:
        ladder = policy.ladders[position.ladder]
        window = policy.providers[ladder[position.rung].provider].context_window
        larger = any(policy.providers[ladder[i].provider].context_window > window for i in position.later_rungs())
        return Action.HOP if larger else Action.FINAL
    if (
        failure is Failure.RATE_LIMITED
        and retry_after_s is not None
        and retry_after_s <= policy.retry_after_max_s
        and position.next_is_same_rung(policy)
    ):
        return Action.WAIT
    return Action.HOP


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Retry-After as delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_wall)
    except (TypeError, ValueError, IndexError):
        return None


def previous_failure(record: TripRecord | None, attempt: int, now_ms: float, per_try_ms: float) -> Failure | None:
    """Why try `attempt - 1` failed, as far as this try can know."""
    if attempt <= 1:
        return None
    if record is None or record.attempt < attempt - 1:
        # The previous try never reached the attempt filter: no connection to the rung.
        return Failure.CONNECT_ERROR
    if record.failure is not None:
        return record.failure
    # It reached the rung but no answer came back through the filter: the per-try timer or a
    # reset ended it. 5 % slack for timer granularity.
    if per_try_ms > 0 and now_ms - record.started_ms >= per_try_ms * 0.95:
        return Failure.TIMEOUT
    return Failure.CONNECT_ERROR
