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

from ..core import RETRY_RULE, Failure, Retry, TripRecord
from ..policy import Policy


class Action(StrEnum):
    SAME = "same"  # flip the answer to 503: Envoy retries on this rung's next slot
    WAIT = "wait"  # keep the 429: Envoy waits out Retry-After, then this rung's next slot
    HOP = "hop"  # flip to 503: the next real try is on `next_rung`; slots before it are skipped
    FINAL = "final"  # this is the client's answer: render the failure in its dialect


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    next_rung: int | None = None  # where the next real try goes (SAME, WAIT, HOP)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a try stands in the request's ladder ordering."""

    ladder: str
    rung: int
    slot: int
    order: tuple[int, ...]
    attempt: int  # 1-based, as Envoy counts (skipped slots included)
    tries: int  # Envoy's attempts for the request: every slot of the ordering, or 1

    def slots(self, policy: Policy) -> list[tuple[int, int]]:
        """The aggregate cluster's priorities in order: (rung, slot), `attempts` slots a rung."""
        rungs = policy.ladders[self.ladder]
        return [(r, s) for r in self.order for s in range(rungs[r].attempts)]


def next_step(
    policy: Policy, position: Position, failure: Failure, retry_after_s: float | None, real_tries: int
) -> Step:
    """After a try failed with `failure` (`real_tries` tries reached a provider, this one
    included): the same rung again, a later rung, or the end. The rule of each failure class is
    RETRY_RULE; the Envoy mechanics enforce it: a slot the next real try must not use is skipped
    by the attempt filter without reaching its provider."""
    rule = RETRY_RULE[failure]
    if failure is Failure.SAFETY_BLOCK and policy.hop_on_safety_block:
        rule = Retry.NEXT_RUNG
    if rule is Retry.STOP or real_tries >= policy.max_attempts:
        return Step(Action.FINAL)
    plan = position.slots(policy)
    here = plan.index((position.rung, position.slot)) if (position.rung, position.slot) in plan else len(plan)
    envoy_left = position.tries - position.attempt  # Envoy attempts after this one
    if rule is Retry.SAME_RUNG:
        short_wait = retry_after_s is not None and retry_after_s <= policy.retry_after_max_s
        same_again = here + 1 < len(plan) and plan[here + 1][0] == position.rung and envoy_left >= 1
        if failure is Failure.RATE_LIMITED and not short_wait:
            same_again = False  # a long or missing Retry-After: a persistent limit
        if same_again:
            return Step(Action.WAIT if failure is Failure.RATE_LIMITED else Action.SAME, position.rung)
        rule = Retry.NEXT_RUNG
    here_window = policy.context_window_of(position.ladder, position.rung)
    for k in range(here + 1, len(plan)):
        rung, slot = plan[k]
        if rung == position.rung or slot != 0:
            continue
        if k - here > envoy_left:
            break  # Envoy would run out of attempts on the way there
        if rule is Retry.LARGER_CONTEXT and policy.context_window_of(position.ladder, rung) <= here_window:
            continue
        return Step(Action.HOP, rung)
    return Step(Action.FINAL)


def may_try(step_target: int | None, position: Position) -> bool:
    """Is this slot where the next real try must be? (None: nothing was decided: try it.)"""
    return step_target is None or step_target == position.rung


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
