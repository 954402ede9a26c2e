"""The health board: what Rungway knows about every rung endpoint (provider x model).

Theory of operation. Every try the attempt filter sees becomes an observation; quota signals,
abandonments and decided-request counts are events too. Each sidecar process keeps one Board and
applies every event it receives — its own at once, other sidecars' through the health bus — so
boards fed the same events agree. From the events the board keeps, per endpoint: a circuit (H1),
a rolling window of samples for the degradation score (H2), a latency baseline (the p95 and
median of its healthy answers) and the task classes' usual output size, the latency-SLO state
and the quota reset time (H4). `decide` asks `usable()` for each rung of a ladder; the answer
depends on the request's impact class, so low-stakes traffic leaves a sick rung first and
revenue-critical traffic last.

State moves only in the commands `observe`, `apply`, `tick` and `admit`; the queries `usable`,
`half_open`, `baseline`, `score` and `snapshot` never change it (the runtime ticks the board
before it asks). Everything here is pure: times come in as arguments (wall-clock seconds, because
events cross processes and hosts), and nothing does I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ..core import Abandoned, BusEvent, Failure, Impact, Observation, QuotaSignal, RequestsDecided
from ..policy import HealthSettings
from .baseline import HISTORY, Baseline, LatencyHistory
from .budget import RetryBudget
from .circuit import Circuit, CircuitConfig, CircuitState, Outcome, Transition
from .score import HEALTHY, IGNORED, Running, Sample, Score, compute_score, degraded_reason

_MAX_SAMPLES = 5000
_TOKEN_ALPHA = 0.05  # slow: the usual output size should describe the rung when it is well
_SCORE_TTL_S = 1.0  # scores are recomputed at most this often per endpoint (or on new samples)
_WELL = 0.9  # error component at or above which the baseline learns
# At most HISTORY / this many answers join a baseline per window, so at any request rate its p95
# spans at least this many windows: a slow drift moves it slowly.
_BASELINE_SPAN_WINDOWS = 10
# The first answers teach at once, so there is a baseline: this many, so that its p95 is no
# longer just their max (a max of five can sit at a healthy median and call the tail slow).
_BASELINE_FIRST = 20
_CLOCK_SKEW_S = 5.0  # an event stamped later than this ahead of us is another host's clock
_TOKEN_Z_OK = 2.0
_TOKEN_MIN_HISTORY = 20
_QUOTA_CAP_S = 86_400  # a reset days away is a provider's quirk, not a plan


@dataclass
class Endpoint:
    key: str
    circuit: Circuit
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=_MAX_SAMPLES))
    baselines: dict[bool, LatencyHistory] = field(default_factory=dict)  # by stream (TTFT vs whole answer)
    configured_baseline_s: float | None = None
    tokens: dict[str, Running] = field(default_factory=dict)  # by task class
    quota_until: float = 0.0
    slo_breach_since: float | None = None
    last_trip: tuple[float, Failure] | None = None
    routes: set[tuple[str, int]] = field(default_factory=set)  # (ladder, rung) it served
    # Healthy latencies waiting a window before they may teach the baseline: (at, stream, s).
    unlearned: deque[tuple[float, bool, float]] = field(default_factory=lambda: deque(maxlen=_MAX_SAMPLES))
    scored: tuple[float, Score] = (float("-inf"), HEALTHY)  # the latest score and when it was computed
    unscored: int = 0  # samples added since the score was computed
    off_until: dict[Impact, float] = field(default_factory=dict)  # score-based hysteresis
    cleared_at: float = float("-inf")  # when probes last closed the circuit (and cleared the window)
    # Latest live try that said something about the endpoint (not a probe, not a failure about
    # the request itself): which client-named models are worth probing.
    used_at: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Unusable:
    reason: Failure


class Board:
    def __init__(
        self,
        settings: HealthSettings,
        baselines: dict[str, float] | None = None,
        configured: Collection[str] = (),
    ) -> None:
        """`configured`: the endpoints the policy names with a fixed model. They are never
        evicted; every other endpoint is named by a client's model and counts against
        `max_client_endpoints`."""
        self.settings = settings
        c = settings.circuit
        self._circuit_config = CircuitConfig(
            failure_rate_threshold=c.failure_rate_threshold,
            window_s=c.window_s,
            minimum_calls=c.minimum_calls,
            consecutive_failures=c.consecutive_failures,
            open_s=c.open_s,
            half_open_probes=c.half_open_probes,
            half_open_successes=c.half_open_successes,
            probe_bound_s=c.probe_bound_s,
        )
        self._configured_baselines = baselines or {}
        self.endpoints: dict[str, Endpoint] = {}
        self.budget = RetryBudget(settings)
        self._outbox: list[Abandoned] = []
        self._configured = frozenset(configured)
        self._client_named: OrderedDict[str, None] = OrderedDict()  # least recently mentioned first
        self.evictions = 0  # client-named endpoints forgotten to stay within the cap

    def reconfigure(self, baselines: dict[str, float], configured: Collection[str]) -> None:
        """A new policy revision's endpoints and stated baselines (a reload): what the board
        learned of every endpoint stays. An endpoint the policy names now is never evicted."""
        self._configured_baselines = baselines
        self._configured = frozenset(configured)
        for key in self._configured:
            self._client_named.pop(key, None)
        for key in self.endpoints:  # no longer named by the policy: a client-named one now
            if key not in self._configured and key not in self._client_named:
                self._client_named[key] = None

    def endpoint(self, key: str) -> Endpoint:
        """The endpoint's record, created on first mention (a command). A client-named endpoint
        past `max_client_endpoints` evicts the least recently mentioned one."""
        ep = self.endpoints.get(key)
        if key not in self._configured:
            if ep is not None:
                self._client_named.move_to_end(key)
            else:
                self._client_named[key] = None
                if len(self._client_named) > self.settings.max_client_endpoints:
                    gone, _ = self._client_named.popitem(last=False)
                    del self.endpoints[gone]
                    self.evictions += 1
        if ep is None:
            provider = key.partition("/")[0]
            configured = self._configured_baselines.get(key, self._configured_baselines.get(f"{provider}/*"))
            ep = Endpoint(key, Circuit(self._circuit_config), configured_baseline_s=configured)
            self.endpoints[key] = ep
        return ep

    # ---- commands ----------------------------------------------------------------------------

    def apply(self, event: BusEvent, now: float) -> list[tuple[str, Transition]]:
        """Feed one bus event; returns the circuit transitions it caused (for the bus/logs)."""
        if isinstance(event, Observation):
            return self.observe(event, now)
        if isinstance(event, QuotaSignal):
            ep = self.endpoint(event.key)
            ep.quota_until = max(ep.quota_until, min(event.until, now + _QUOTA_CAP_S))
        elif isinstance(event, Abandoned):
            return self._apply_abandon(event, now)
        elif isinstance(event, RequestsDecided):
            self.budget.note_requests(min(event.at, now + _CLOCK_SKEW_S), event.count)
        return []

    def observe(self, obs: Observation, now: float) -> list[tuple[str, Transition]]:
        if obs.at > now + _CLOCK_SKEW_S:
            obs = replace(obs, at=now)  # windows evict in time order: no event from the future
        ep = self.endpoint(obs.key)
        if obs.ladder:
            ep.routes.add((obs.ladder, obs.rung))
        if not obs.probe and obs.failure not in IGNORED:
            ep.used_at = max(ep.used_at, obs.at)
        if obs.attempt > 1 and not obs.probe:
            self.budget.note_retry(obs.at)
        # Timer transitions first: they fell due before this result (a hold may end in a close).
        transitions = self._tick_circuit(ep, now)
        if obs.at < ep.cleared_at:
            # From before probes closed the circuit (a replay after a bus reconnect, a slow
            # relay): it describes the outage that is over, not the endpoint now.
            return [(obs.key, t) for t in transitions]
        if obs.failure is not None and obs.failure not in IGNORED:
            ep.last_trip = (obs.at, obs.failure)
        ep.samples.append(Sample(obs.at, obs.failure, obs.latency_s, obs.output_tokens, obs.task, obs.stream))
        ep.unscored += 1
        outcome = self._outcome(ep, obs, now)  # against the baseline as it stood before this answer
        # What may teach the baseline: an answer in time (a probe is a tiny completion: how fast
        # it answers says little about a real answer).
        teaching = obs.latency_s if outcome is Outcome.SUCCESS and not obs.probe else None
        forming = self._forming(ep, obs.stream)
        if teaching is not None and forming and self._is_well(ep, now, judge_latency=False):
            # Taught before it is scored: the window then holds no answer the forming baseline
            # has not seen, so an early outlier cannot raise an alarm that stops the learning.
            ep.baselines.setdefault(obs.stream, LatencyHistory()).add(teaching, obs.at)
        self._refresh(ep, now)
        if teaching is not None and not forming and self._is_well(ep, now):
            ep.unlearned.append((obs.at, obs.stream, teaching))
        self._fold_baseline(ep, now)
        healthy = obs.failure is None and not obs.probe
        if healthy and obs.output_tokens is not None and obs.task and self._is_well(ep, now):
            self._learn_tokens(ep, obs.task, obs.output_tokens)
        if outcome is Outcome.SLOW:
            ep.last_trip = (obs.at, Failure.TIMEOUT)
        recorded = ep.circuit.record(now, outcome, probe=obs.probe)
        self._clear_if_closed(ep, recorded, now)
        transitions += recorded
        transitions += self._open_if_abandoned(ep, now)
        return [(obs.key, t) for t in transitions]

    def tick(self, now: float) -> list[tuple[str, Transition]]:
        """Apply what time alone changes: circuit timers, windows, scores, departures, SLO
        breaches. The runtime calls it before it asks the board anything."""
        moved: list[tuple[str, Transition]] = []
        for key, ep in self.endpoints.items():
            moved += [(key, t) for t in self._tick_circuit(ep, now)]
            self._refresh(ep, now)
        self.budget.tick(now)
        return moved

    def admit(self, key: str, now: float) -> list[tuple[str, Transition]]:
        """A live request takes one of a half-open circuit's probe slots."""
        ep = self.endpoint(key)
        ep.circuit.allow(now)
        return [(key, t) for t in self._tick_circuit(ep, now)]

    def drain_outbox(self) -> list[Abandoned]:
        """Events this replica owes the bus (an abandonment it saw first)."""
        out, self._outbox = self._outbox, []
        return out

    def _tick_circuit(self, ep: Endpoint, now: float) -> list[Transition]:
        moved = ep.circuit.tick(now)
        self._clear_if_closed(ep, moved, now)
        return moved

    @staticmethod
    def _clear_if_closed(ep: Endpoint, transitions: list[Transition], now: float) -> None:
        closes = [t for t in transitions if t.target is CircuitState.CLOSED]
        if not closes:
            return
        # Probes proved the endpoint well again: the window's samples describe the outage,
        # not the endpoint now, and would keep traffic away for another whole window. (Stamped
        # when the close fell due: a hold that ended in a close is noticed a little later.)
        ep.samples.clear()
        ep.scored = (now, HEALTHY)
        ep.unscored = 0
        ep.off_until.clear()
        ep.slo_breach_since = None
        ep.cleared_at = closes[-1].at

    def _refresh(self, ep: Endpoint, now: float) -> None:
        """Recompute the score when it is stale, and move what depends on it: which impact
        classes left the endpoint (they stay away open_s), and the latency-SLO breach timer."""
        cutoff = now - self.settings.window_s
        while ep.samples and ep.samples[0].at < cutoff:
            ep.samples.popleft()
        at, score = ep.scored
        # Computing a score walks the whole window: reuse it while it is young and few new
        # samples arrived (under 5 % of the window; in a small window every sample counts).
        if ep.unscored >= max(1, len(ep.samples) // 20) or now - at >= _SCORE_TTL_S:
            score = self._compute(ep)
            ep.scored = (now, score)
            ep.unscored = 0
        for impact in Impact:
            if score.value < self.settings.leave_below.for_impact(impact):
                # Hysteresis: once this impact class left, it stays away at least open_s.
                ep.off_until[impact] = now + self.settings.circuit.open_s
        if score.latency < 1.0:
            if ep.slo_breach_since is None:
                ep.slo_breach_since = now
        else:
            ep.slo_breach_since = None
        if ep.unlearned and not self._is_well(ep, now):
            # An alarm: the answers still waiting to teach the baseline may be the slide's start.
            ep.unlearned.clear()

    def _compute(self, ep: Endpoint, samples: Iterable[Sample] | None = None) -> Score:
        """The score of `samples` (the endpoint's window as kept, by default)."""
        chosen = ep.samples if samples is None else samples
        return compute_score(chosen, self.settings, partial(self.latency_baseline, ep), ep.tokens.get)

    def _open_if_abandoned(self, ep: Endpoint, now: float) -> list[Transition]:
        """A score below every impact class's threshold leaves no traffic on the endpoint: say
        so with an open circuit, whose probes are then the way back. (Left closed, the frozen
        score would keep it idle until its samples aged out, then send every class back blind.)"""
        if ep.circuit.state(now) is not CircuitState.CLOSED:
            return []
        score = ep.scored[1]
        if score.samples < self.settings.min_samples or score.value >= self.settings.leave_below.revenue_critical:
            return []
        ep.last_trip = (now, score.worst())
        # Replicas judge the score at slightly different moments (and from caches of different
        # ages): the first to see it tells the others, so the fleet opens, probes and closes as one.
        self._outbox.append(Abandoned(ep.key, now, round(score.value, 3), score.worst()))
        return ep.circuit.force_open(now, degraded_reason(score.value))

    def _apply_abandon(self, event: Abandoned, now: float) -> list[tuple[str, Transition]]:
        # Older than open_s: the sender has moved on (half-open or closed) since; opening now
        # would put this replica out of step with it, not in.
        if event.at < now - self.settings.circuit.open_s:
            return []
        if event.at > now + _CLOCK_SKEW_S:
            return []  # a clock far ahead: its news could never look old; this replica sees for itself
        ep = self.endpoint(event.key)
        last = ep.circuit.last_transition
        if ep.circuit.state(now) is not CircuitState.CLOSED or (
            last is not None and last.at > event.at - _CLOCK_SKEW_S
        ):
            return []  # opened already, or not clearly newer than what this circuit did since
        ep.last_trip = (event.at, event.reason)
        moved = self._tick_circuit(ep, now) + ep.circuit.force_open(now, degraded_reason(event.score))
        return [(event.key, t) for t in moved]

    def _forming(self, ep: Endpoint, stream: bool) -> bool:
        """The first answers teach at once, so there is a baseline; later ones only once they are
        a window old, so that a slide within one window — a brownout — can never drag the
        baseline it is judged by."""
        history = ep.baselines.get(stream)
        return history is None or history.n < _BASELINE_FIRST

    def _fold_baseline(self, ep: Endpoint, now: float) -> None:
        cutoff = now - self.settings.window_s
        gap = self.settings.window_s * _BASELINE_SPAN_WINDOWS / HISTORY
        while ep.unlearned and ep.unlearned[0][0] <= cutoff:
            at, stream, latency = ep.unlearned.popleft()
            history = ep.baselines.setdefault(stream, LatencyHistory())
            # Thinned by time: a busy endpoint's history still spans many windows.
            if at - history.joined_at >= gap:
                history.add(latency, at)

    def _learn_tokens(self, ep: Endpoint, task: str, tokens: int) -> None:
        """The task's usual output size; an answer far outside it (the collapse the z-score
        is there to see) does not teach it."""
        usual = ep.tokens.setdefault(task, Running())
        if usual.n >= _TOKEN_MIN_HISTORY:
            sigma = max(math.sqrt(usual.var), 1.0)
            if abs(tokens - usual.mean) > _TOKEN_Z_OK * sigma:
                return
        usual.add(float(tokens), _TOKEN_ALPHA)

    def _outcome(self, ep: Endpoint, obs: Observation, now: float) -> Outcome:
        if obs.failure in IGNORED:
            return Outcome.IGNORED
        if obs.failure is not None:
            return Outcome.FAILURE
        baseline = self.baseline(ep, obs.stream)
        factor = self.settings.circuit.slow_call_factor
        if ep.circuit.state(now) is not CircuitState.CLOSED:
            # To close, a probe must answer within the latency SLO: a circuit opened for a
            # latency score would otherwise close on probes the score still calls slow. (Open
            # or half-open alike: a probe's answer means the same on either side of the hold's end.)
            factor = min(factor, self.settings.latency_slo_factor)
        if obs.latency_s is not None and baseline is not None and obs.latency_s > baseline * factor:
            return Outcome.SLOW
        return Outcome.SUCCESS

    def _is_well(self, ep: Endpoint, now: float, *, judge_latency: bool = True) -> bool:
        """Well enough to learn what normal looks like from: a baseline learned during a
        brownout's early, error-laden or slow minutes would hide the slowdown that follows."""
        score = ep.scored[1]
        slow = judge_latency and score.latency < 1.0
        return ep.circuit.state(now) is CircuitState.CLOSED and score.errors >= _WELL and not slow

    # ---- queries ---------------------------------------------------------------------------

    def usable(self, key: str, impact: Impact, now: float, *, first: bool) -> Unusable | None:
        """May this request use the endpoint? `first` says whether it would be the request's
        first rung: only then may a half-open circuit admit it (live_half_open)."""
        ep = self.endpoints.get(key)
        if ep is None:
            return None  # never seen: nothing against it
        if ep.quota_until > now:
            return Unusable(Failure.RATE_LIMITED)
        state = ep.circuit.state(now)
        if state is CircuitState.HALF_OPEN:
            admitted = first and self.settings.circuit.live_half_open and ep.circuit.would_admit(now)
            return None if admitted else Unusable(self._trip_reason(ep))
        if state is CircuitState.OPEN:
            return Unusable(self._trip_reason(ep))
        score = ep.scored[1]
        if score.value < self.settings.leave_below.for_impact(impact) or ep.off_until.get(impact, 0.0) > now:
            return Unusable(score.worst() if score.samples else Failure.SERVER_ERROR)
        if impact is not Impact.REVENUE_CRITICAL and self.slo_degraded(ep, now):
            return Unusable(Failure.TIMEOUT)
        return None

    @staticmethod
    def _trip_reason(ep: Endpoint) -> Failure:
        return ep.last_trip[1] if ep.last_trip else Failure.SERVER_ERROR

    def half_open(self, key: str, now: float) -> bool:
        ep = self.endpoints.get(key)
        return ep is not None and ep.circuit.state(now) is CircuitState.HALF_OPEN

    def retries_allowed(self, now: float) -> bool:
        """Fleet-wide retry budget: extra tries stay within ratio x requests + floor."""
        return self.budget.retries_allowed(now)

    def baseline(self, ep: Endpoint, stream: bool) -> float | None:
        """The p95 of a healthy answer's latency (configured, else learned), never below the floor."""
        found = self.latency_baseline(ep, stream)
        return found.p95 if found is not None else None

    def latency_baseline(self, ep: Endpoint, stream: bool) -> Baseline | None:
        """A healthy answer's p95 and median (configured, else learned), neither below the
        floor: an endpoint answering in milliseconds is not slow because a proxy queued."""
        if ep.configured_baseline_s is not None:
            found = Baseline.configured(ep.configured_baseline_s)
        else:
            history = ep.baselines.get(stream)
            if history is None or history.n < self.settings.min_samples:
                return None
            found = Baseline(history.p95, history.p50)
        floor = self.settings.latency_floor_s
        return Baseline(max(found.p95, floor), max(found.p50, floor))

    def score(self, ep: Endpoint, now: float) -> Score:
        """The endpoint's score over the window ending at `now`, computed afresh."""
        cutoff = now - self.settings.window_s
        return self._compute(ep, (s for s in ep.samples if s.at >= cutoff))

    def slo_degraded(self, ep: Endpoint, now: float) -> bool:
        """p95 over latency_slo_factor x baseline, continuously for latency_slo_s."""
        since = ep.slo_breach_since
        return since is not None and now - since >= self.settings.latency_slo_s

    def snapshot(self, now: float) -> dict[str, Any]:
        rungs = []
        for key in sorted(self.endpoints):
            ep = self.endpoints[key]
            score = self.score(ep, now)
            rungs.append(
                {
                    "endpoint": key,
                    "routes": [f"{ladder}/{rung}" for ladder, rung in sorted(ep.routes)],
                    "circuit": ep.circuit.snapshot(now),
                    "score": round(score.value, 3),
                    "components": {
                        "errors": round(score.errors, 3),
                        "schema": round(score.schema, 3),
                        "latency": round(score.latency, 3),
                        "tokens": round(score.tokens, 3),
                    },
                    "samples": score.samples,
                    "p95_s": score.p95_s,
                    "baseline_s": {"json": self.baseline(ep, False), "stream": self.baseline(ep, True)},
                    "slo_degraded": self.slo_degraded(ep, now),
                    "quota_until": ep.quota_until if ep.quota_until > now else None,
                    "last_trip": {"at": ep.last_trip[0], "reason": ep.last_trip[1].value} if ep.last_trip else None,
                }
            )
        return {"rungs": rungs, "retry_budget": self.budget.snapshot(now), "evictions": self.evictions}
