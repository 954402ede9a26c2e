"""Circuit breaker per rung endpoint, one provider's model (pure).

Theory of operation
-------------------
CLOSED counts each answered call into a sliding time window (entries newer than ``window_s``, at
most ``WINDOW_CAP`` of them). After each counted call it opens when ``consecutive_failures`` hard
failures came in a row, or when the window holds at least ``minimum_calls`` calls and the failure
rate reached ``failure_rate_threshold``. Outcomes:

- SUCCESS counts as a call and ends a run of consecutive failures.
- FAILURE (timeouts, 5xx, invalid answers) counts for the rate and extends the run.
- SLOW (answered, but over the slow-call threshold) counts as a failure for the rate only. It
  neither extends the run, since the rung did answer, nor ends it, since a slow answer is no sign
  of recovery.
- IGNORED (client errors) is not evidence about the rung and changes no count. In HALF_OPEN a live
  call's result still frees its admission: the call did finish.

OPEN admits no live call for ``open_s``; this is the hysteresis that keeps traffic off a rung it
just left. A rung that fails again within ``window_s`` of closing is flapping (its probes pass but
its traffic does not): each such re-open doubles the time open, up to ``FLAP_BACKOFF_CAP`` x
``open_s``, until a close that lasts a window resets it.

Finding out is separate from letting traffic back. Synthetic probes are sent all the while the
circuit is not closed, and a probe's result (``probe=True``) counts the same in OPEN and in
HALF_OPEN: a pass adds to the run of passes, anything else (failure, slow) ends the run and moves
nothing — a failing probe never prolongs the hold. A run of ``half_open_successes`` passes closes a
HALF_OPEN circuit at once; an OPEN one closes the moment its hold ends (OPEN → CLOSED), otherwise it
turns HALF_OPEN keeping the run. So the backoff decides when live traffic may come back, never how
late recovery is noticed. This is also what keeps replicas of the board in step: they apply the same
observations at slightly different local times, and a probe's answer landing just before the hold
ends in one replica and just after it in another has the same effect in both. (Live answers in OPEN
are still dropped: they are late answers to calls admitted before it opened.)

HALF_OPEN also admits up to ``half_open_probes`` live calls at once (when the board lets live
traffic try it). A live success adds to the run; a live failure or slow answer re-opens it, as does
an admitted call left unanswered for ``probe_bound_s``. Results also arrive for live calls this
circuit did not admit (other sidecars' observations, via the health bus), so a live result is not
matched to an admission: it frees the *oldest* one. That way the hung-call timer can fire late but
never early, because the admissions left are the newest ones. Probes are never admitted, so their
results free nothing.

Timers are applied lazily by whichever command comes next (``tick``, ``record``, ``allow``,
``force_open``), and a transition is stamped with the time it fell due, not the time someone
noticed. Then the state does not depend on how often it is polled. Queries (``state``,
``would_admit``, ``snapshot``) never change the circuit: they show it as it stands at ``now``,
timers fired on a scratch copy.
Time never runs backwards here: a ``now`` earlier than one already seen counts as the latest seen,
because observations from several worker processes may arrive slightly out of order.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import MutableSequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class CircuitState(StrEnum):
    CLOSED = "closed"  # traffic flows and is counted
    OPEN = "open"  # no traffic, for at least open_s
    HALF_OPEN = "half_open"  # the hold is over: passing probes (and admitted live calls) close it


TRANSITIONS: Final[frozenset[tuple[CircuitState, CircuitState]]] = frozenset(
    {
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),  # the hold ends with the probes already passing
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
        (CircuitState.HALF_OPEN, CircuitState.OPEN),
    }
)

# Most calls the window holds; the oldest go first. At high rates the window is shorter than window_s.
WINDOW_CAP: Final = 10_000
# Longest a flapping rung stays open, as a multiple of open_s (2**3: three doublings).
FLAP_BACKOFF_CAP: Final = 8
_FLAP_DOUBLINGS: Final = FLAP_BACKOFF_CAP.bit_length() - 1
# Timer transitions allow() fired, waiting for the next tick(); bounded in case nobody ticks.
_PENDING_CAP: Final = 1_000


class IllegalTransition(Exception):  # noqa: N818 - the name the ladder code and the issue use
    """The state machine was asked for a move its transition table does not have."""

    def __init__(self, source: CircuitState, target: CircuitState, reason: str) -> None:
        super().__init__(f"circuit cannot go from {source} to {target} (reason: {reason})")
        self.source = source
        self.target = target


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    SLOW = "slow"  # answered, but over the slow-call threshold
    IGNORED = "ignored"  # not the rung's fault (client errors): not counted


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, but was {value!r}")


def _count(name: str, value: object, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high is not None and value > high):
        bounds = f"in [1, {high}]" if high is not None else ">= 1"
        raise ValueError(f"{name} must be an integer {bounds}, but was {value!r}")


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    failure_rate_threshold: float = 50.0  # percent of the calls in the window
    window_s: float = 60.0
    minimum_calls: int = 5  # calls in the window before the rate can open the circuit
    consecutive_failures: int = 5
    open_s: float = 30.0  # least time OPEN: the hysteresis
    half_open_probes: int = 2  # live calls admitted at once while HALF_OPEN
    half_open_successes: int = 2  # passes in a row (probes, or admitted live calls) that close it
    probe_bound_s: float = 30.0  # an admitted live call unanswered this long re-opens the circuit

    def __post_init__(self) -> None:
        rate = self.failure_rate_threshold
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not (0 < rate <= 100):
            raise ValueError(f"failure_rate_threshold must be in (0, 100], but was {rate!r}")
        _positive("window_s", self.window_s)
        # A minimum the capped window can never hold would silently disable the rate rule.
        _count("minimum_calls", self.minimum_calls, WINDOW_CAP)
        _count("consecutive_failures", self.consecutive_failures)
        _positive("open_s", self.open_s)
        _count("half_open_probes", self.half_open_probes)
        _count("half_open_successes", self.half_open_successes)
        _positive("probe_bound_s", self.probe_bound_s)


@dataclass(frozen=True, slots=True)
class Transition:
    at: float  # when it fell due
    source: CircuitState
    target: CircuitState
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "source": self.source.value, "target": self.target.value, "reason": self.reason}


class Circuit:
    """One rung endpoint's breaker. Every method takes ``now``, monotonic seconds."""

    __slots__ = (
        "_admitted",
        "_closed_at",
        "_config",
        "_consecutive",
        "_failures",
        "_flaps",
        "_last",
        "_now",
        "_open_until",
        "_pending",
        "_state",
        "_successes",
        "_window",
    )

    def __init__(self, config: CircuitConfig) -> None:
        self._config = config
        self._state = CircuitState.CLOSED
        self._now = -math.inf
        # CLOSED: (time, failed) per counted call, oldest first, with running counts.
        self._window: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._consecutive = 0
        self._open_until: float | None = None
        # HALF_OPEN: times of admissions not yet answered, oldest first.
        self._admitted: deque[float] = deque()
        self._successes = 0
        self._last: Transition | None = None
        self._pending: deque[Transition] = deque(maxlen=_PENDING_CAP)
        # Flap backoff: when probes last closed it, and how many quick re-opens since.
        self._closed_at: float | None = None
        self._flaps = 0

    @property
    def config(self) -> CircuitConfig:
        return self._config

    @property
    def last_transition(self) -> Transition | None:
        return self._last

    # -- public API --------------------------------------------------------------------------

    def state(self, now: float) -> CircuitState:
        """The state at `now` (a query: due timers are applied to a scratch copy only)."""
        return self._settled(now)._state

    def would_admit(self, now: float) -> bool:
        """Would allow(now) say yes? (a query)"""
        settled = self._settled(now)
        if settled._state is CircuitState.CLOSED:
            return True
        return settled._state is CircuitState.HALF_OPEN and len(settled._admitted) < self._config.half_open_probes

    def tick(self, now: float) -> list[Transition]:
        """Apply the timers due by `now`; returns every transition since the last tick that no
        other command returned (those allow() fired, and these)."""
        now = self._tick(now)
        moved = list(self._pending)
        self._pending.clear()
        if self._state is not CircuitState.CLOSED:
            self._fire_timers(now, moved)
        return moved

    def allow(self, now: float) -> bool:
        """May a live call go to this rung now? In HALF_OPEN a yes is an admission (a command:
        timers it fires are returned by the next tick)."""
        now = self._tick(now)
        if self._state is not CircuitState.CLOSED:
            self._fire_timers(now, self._pending)  # the hold may end in CLOSED, probes passed
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.HALF_OPEN and len(self._admitted) < self._config.half_open_probes:
            self._admitted.append(now)
            return True
        return False

    def record(self, now: float, outcome: Outcome, *, probe: bool = False) -> list[Transition]:
        """An observed call result; returns the transitions it and any due timers caused.
        `probe`: a synthetic probe's result, which counts while OPEN too (see the module doc)."""
        now = self._tick(now)
        moved: list[Transition] = []
        state = self._state
        if state is not CircuitState.CLOSED:
            self._fire_timers(now, moved)
            state = self._state
        if state is CircuitState.CLOSED:
            if outcome is not Outcome.IGNORED:
                self._count(now, outcome, moved)
        elif probe:
            # The same in OPEN and HALF_OPEN, so it does not matter on which side of the hold's
            # end a replica hears it. Only a HALF_OPEN circuit closes at once; an OPEN one at the
            # end of its hold (_fire_timers).
            if outcome is Outcome.SUCCESS:
                self._successes += 1
                if state is CircuitState.HALF_OPEN:
                    moved += self._close_if_passed(now, "")
            elif outcome is not Outcome.IGNORED:
                self._successes = 0
        elif state is CircuitState.HALF_OPEN:
            if self._admitted:
                self._admitted.popleft()
            if outcome is Outcome.SUCCESS:
                self._successes += 1
                moved += self._close_if_passed(now, "")
            elif outcome is Outcome.FAILURE:
                moved.append(self._move(now, CircuitState.OPEN, "probe failed"))
            elif outcome is Outcome.SLOW:
                moved.append(self._move(now, CircuitState.OPEN, "probe slow"))
        # OPEN: late live answers to calls admitted before it opened say nothing new.
        return moved

    def force_open(self, now: float, reason: str) -> list[Transition]:
        """Open now (e.g. a quota signal); a no-op if already OPEN, which keeps its open_until."""
        now = self._tick(now)
        moved: list[Transition] = []
        self._fire_timers(now, moved)
        if self._state is not CircuitState.OPEN:
            moved.append(self._move(now, CircuitState.OPEN, reason))
        return moved

    def snapshot(self, now: float) -> dict[str, Any]:
        """The circuit as it stands at `now` (a query)."""
        c = self._settled(now)
        if c._state is CircuitState.CLOSED:
            horizon = max(now, self._now) - self._config.window_s
            live = [failed for at, failed in c._window if at > horizon]
            calls, failures = len(live), sum(live)
        else:
            calls, failures = len(c._window), c._failures
        return {
            "state": c._state.value,
            "failure_rate": 100 * failures / calls if calls >= self._config.minimum_calls else None,
            "calls": calls,
            "failures": failures,
            "consecutive_failures": c._consecutive,
            "open_until": c._open_until,
            "half_open_admitted": len(c._admitted),
            "half_open_successes": c._successes,
            "last_transition": None if c._last is None else c._last.as_dict(),
        }

    def __repr__(self) -> str:
        # Without a now, this shows the state as of the last call; timers may be due.
        config = self._config
        if self._state is CircuitState.CLOSED:
            return (
                f"<Circuit closed: {self._failures}/{len(self._window)} failed in window,"
                f" {self._consecutive}/{config.consecutive_failures} consecutive>"
            )
        why = f" ({self._last.reason})" if self._last is not None else ""
        if self._state is CircuitState.OPEN:
            return f"<Circuit open until {self._open_until}{why}>"
        return (
            f"<Circuit half_open: {len(self._admitted)}/{config.half_open_probes} probes out,"
            f" {self._successes}/{config.half_open_successes} successes{why}>"
        )

    # -- the state machine ---------------------------------------------------------------------

    def _move(self, now: float, target: CircuitState, reason: str) -> Transition:
        """The only place the state changes."""
        source = self._state
        if (source, target) not in TRANSITIONS:
            raise IllegalTransition(source, target, reason)
        self._state = target
        # The window only means something in CLOSED: start it afresh there, free it elsewhere.
        self._window.clear()
        self._failures = 0
        self._consecutive = 0
        self._admitted.clear()
        if (source, target) != (CircuitState.OPEN, CircuitState.HALF_OPEN):
            self._successes = 0  # probes that passed during the hold still count once it ends
        if target is CircuitState.CLOSED:
            self._closed_at = now
        elif target is CircuitState.OPEN and source is CircuitState.CLOSED:
            quick = self._closed_at is not None and now - self._closed_at < self._config.window_s
            self._flaps = min(self._flaps + 1, _FLAP_DOUBLINGS) if quick else 0
        self._open_until = now + self._open_for() if target is CircuitState.OPEN else None
        self._last = Transition(now, source, target, reason)
        return self._last

    def _settled(self, now: float) -> Circuit:
        """This circuit with the timers due by `now` applied: itself when none are due, else a
        scratch copy (outside CLOSED the window is empty, so the copy is small)."""
        now = max(now, self._now)
        if self._state is CircuitState.CLOSED or not self._timer_due(now):
            return self
        scratch = copy.copy(self)
        scratch._admitted = deque(self._admitted)
        scratch._window = deque()
        scratch._pending = deque(maxlen=_PENDING_CAP)
        scratch._now = now
        scratch._fire_timers(now, scratch._pending)
        return scratch

    def _timer_due(self, now: float) -> bool:
        if self._state is CircuitState.OPEN:
            return self._open_until is not None and now >= self._open_until
        if self._state is CircuitState.HALF_OPEN and self._admitted:
            return now >= self._admitted[0] + self._config.probe_bound_s
        return False

    def _tick(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now

    def _fire_timers(self, now: float, into: MutableSequence[Transition]) -> None:
        config = self._config
        while True:
            if self._state is CircuitState.OPEN:
                open_until = self._open_until
                if open_until is None or now < open_until:
                    return
                held = f"open for {self._open_for():g}s"
                passed = self._close_if_passed(open_until, f"{held}, ")
                if not passed:
                    into.append(self._move(open_until, CircuitState.HALF_OPEN, held))
                into += passed
            elif self._state is CircuitState.HALF_OPEN and self._admitted:
                due = self._admitted[0] + config.probe_bound_s
                if now < due:
                    return
                into.append(self._move(due, CircuitState.OPEN, f"probe unanswered for {config.probe_bound_s:g}s"))
            else:
                return

    def _close_if_passed(self, now: float, prefix: str) -> list[Transition]:
        if self._successes < self._config.half_open_successes:
            return []
        return [self._move(now, CircuitState.CLOSED, f"{prefix}{self._successes} probe successes")]

    def _open_for(self) -> float:
        return self._config.open_s * (1 << self._flaps)

    def _evict(self, now: float) -> None:
        horizon = now - self._config.window_s
        window = self._window
        while window and window[0][0] <= horizon:
            self._failures -= window.popleft()[1]

    def _count(self, now: float, outcome: Outcome, moved: list[Transition]) -> None:
        config = self._config
        self._evict(now)
        failed = outcome is not Outcome.SUCCESS
        self._window.append((now, failed))
        self._failures += failed
        if len(self._window) > WINDOW_CAP:
            self._failures -= self._window.popleft()[1]
        if outcome is Outcome.FAILURE:
            self._consecutive += 1
        elif outcome is Outcome.SUCCESS:
            self._consecutive = 0
        calls = len(self._window)
        if self._consecutive >= config.consecutive_failures:
            moved.append(self._move(now, CircuitState.OPEN, f"{self._consecutive} consecutive failures"))
        elif calls >= config.minimum_calls and self._failures * 100 >= config.failure_rate_threshold * calls:
            rate = 100 * self._failures / calls
            reason = f"failure rate {rate:g}% >= {config.failure_rate_threshold:g}% over {calls} calls"
            moved.append(self._move(now, CircuitState.OPEN, reason))
