"""The health board: what Rungway knows about every rung endpoint (provider x model).

Theory of operation. Every try the attempt filter sees becomes an observation event; quota
signals and decided requests are events too. Each sidecar process keeps one Board and applies
every event it receives — its own at once, other sidecars' through the health bus — so boards
fed the same events agree. From the events the board keeps, per endpoint: a circuit (H1), a
rolling window of samples for the degradation score (H2), a latency baseline and the task
classes' usual output size, the latency-SLO state and the quota reset time (H4). `decide` asks
`usable()` for each rung of a ladder; the answer depends on the request's impact class, so
low-stakes traffic leaves a sick rung first and revenue-critical traffic last.

Everything here is pure: times come in as arguments (wall-clock seconds, because events cross
processes and hosts), and nothing does I/O.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from ..core import Failure, Impact
from ..policy import HealthSettings
from .circuit import Circuit, CircuitConfig, CircuitState, Outcome, Transition

# Failures that say nothing about the endpoint: the request's own fault or its content.
_IGNORED = frozenset({Failure.CLIENT_ERROR, Failure.SAFETY_BLOCK, Failure.CONTEXT_OVERFLOW})
# The answer arrived but broke the contract: counted by the schema-conformance component.
_CONTRACT = frozenset({Failure.SCHEMA_ERROR, Failure.QUALITY_REGRESSION, Failure.TOOL_MISMATCH})
_MAX_SAMPLES = 5000
_BASELINE_ALPHA = 0.05  # slow: a baseline should describe the rung when it is well
_LATENCY_ZERO_AT = 2.0  # the latency component reaches 0 at 2 x the SLO factor
_TOKEN_Z_OK = 2.0
_TOKEN_Z_ZERO = 6.0
_TOKEN_MIN_HISTORY = 20
_SCORE_TTL_S = 1.0  # scores are recomputed at most this often per endpoint (or on new samples)
_WELL = 0.9  # error component at or above which the baseline learns
_BASELINE_BAND = 1.2  # answers within this factor of the baseline teach it; slower ones do not
_BASELINE_UP = 0.01  # the baseline rises slowly and falls quickly: a slide cannot drag it along
_CLOCK_SKEW_S = 5.0  # an event stamped later than this ahead of us is another host's clock


@dataclass(frozen=True, slots=True)
class Observation:
    key: str
    at: float
    failure: Failure | None
    latency_s: float | None = None
    output_tokens: int | None = None
    task: str = ""
    stream: bool = False
    attempt: int = 1
    probe: bool = False
    ladder: str = ""
    rung: int = 0

    def to_event(self) -> dict[str, Any]:
        return {
            "k": "obs",
            "key": self.key,
            "at": self.at,
            "fail": self.failure.value if self.failure else "",
            "lat": self.latency_s,
            "tok": self.output_tokens,
            "task": self.task,
            "stream": self.stream,
            "n": self.attempt,
            "probe": self.probe,
            "ladder": self.ladder,
            "rung": self.rung,
        }

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Observation | None:
        """None for anything malformed: bus events come from other processes (and JSON lets
        NaN, Infinity and huge integers through)."""
        try:
            failure = Failure(event["fail"]) if event.get("fail") else None
            at = _finite(event["at"])
            latency = _finite(event.get("lat")) if event.get("lat") is not None else None
            tokens = event.get("tok")
            if at is None or (latency is not None and latency < 0):
                return None
            return cls(
                key=str(event["key"]),
                at=at,
                failure=failure,
                latency_s=latency,
                output_tokens=tokens if isinstance(tokens, int) and 0 <= tokens < 10**9 else None,
                task=str(event.get("task", "")),
                stream=bool(event.get("stream", False)),
                attempt=_small_int(event.get("n", 1)),
                probe=bool(event.get("probe", False)),
                ladder=str(event.get("ladder", "")),
                rung=_small_int(event.get("rung", 0)),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _degraded(score: float) -> str:
    """The reason a circuit opens when no impact class would use its endpoint any more."""
    return f"degraded: score {score:.2f}"


def _small_int(value: object) -> int:
    number = _finite(value)
    if number is None or not 0 <= number < 1_000_000:
        raise ValueError("not a small non-negative integer")
    return int(number)


@dataclass(frozen=True, slots=True)
class Score:
    value: float
    errors: float
    schema: float
    latency: float
    tokens: float
    samples: int
    p95_s: float | None

    def worst(self) -> Failure:
        """The failure class of the component pulling the score down most."""
        parts = {
            Failure.SERVER_ERROR: self.errors,
            Failure.SCHEMA_ERROR: self.schema,
            Failure.TIMEOUT: self.latency,
            Failure.QUALITY_REGRESSION: self.tokens,
        }
        return min(parts, key=lambda f: parts[f])


HEALTHY = Score(1.0, 1.0, 1.0, 1.0, 1.0, 0, None)


@dataclass
class _Sample:
    at: float
    failure: Failure | None
    latency_s: float | None
    tokens: int | None
    task: str
    stream: bool


@dataclass
class _Running:
    """Mean and variance by exponential weighting (Welford-like, bounded memory)."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0

    def add(self, value: float, alpha: float, *, by_count: bool = True) -> None:
        """`by_count`: while there are few values, weigh each as 1/n (a plain mean)."""
        self.n += 1
        if self.n == 1:
            self.mean = value
            return
        a = max(alpha, 1.0 / self.n) if by_count else alpha
        delta = value - self.mean
        self.mean += a * delta
        self.var = (1 - a) * (self.var + a * delta * delta)


@dataclass
class Endpoint:
    key: str
    circuit: Circuit
    samples: deque[_Sample] = field(default_factory=lambda: deque(maxlen=_MAX_SAMPLES))
    baselines: dict[bool, _Running] = field(default_factory=dict)  # by stream (TTFT vs whole answer)
    configured_baseline_s: float | None = None
    tokens: dict[str, _Running] = field(default_factory=dict)  # by task class
    quota_until: float = 0.0
    slo_breach_since: float | None = None
    last_trip: tuple[float, Failure] | None = None
    routes: set[tuple[str, int]] = field(default_factory=set)  # (ladder, rung) it served
    # Healthy latencies waiting a window before they may teach the baseline: (at, stream, s).
    unlearned: deque[tuple[float, bool, float]] = field(default_factory=lambda: deque(maxlen=_MAX_SAMPLES))
    score_cache: tuple[float, Score] | None = None
    unscored: int = 0  # samples added since the cached score was computed
    off_until: dict[Impact, float] = field(default_factory=dict)  # score-based hysteresis
    cleared_at: float = float("-inf")  # when probes last closed the circuit (and cleared the window)


@dataclass(frozen=True, slots=True)
class Unusable:
    reason: Failure


class Board:
    def __init__(self, settings: HealthSettings, baselines: dict[str, float] | None = None) -> None:
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
        self._requests: deque[tuple[float, int]] = deque(maxlen=100_000)  # (at, how many)
        self._pending: list[tuple[str, Transition]] = []
        self._outbox: list[dict[str, Any]] = []
        self._retries: deque[float] = deque(maxlen=100_000)

    def endpoint(self, key: str) -> Endpoint:
        ep = self.endpoints.get(key)
        if ep is None:
            provider = key.partition("/")[0]
            configured = self._configured_baselines.get(key, self._configured_baselines.get(f"{provider}/*"))
            ep = Endpoint(key, Circuit(self._circuit_config), configured_baseline_s=configured)
            self.endpoints[key] = ep
        return ep

    # ---- events ------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any], now: float) -> list[tuple[str, Transition]]:
        """Feed one bus event; returns the circuit transitions it caused (for the bus/logs)."""
        kind = event.get("k")
        if kind == "obs":
            obs = Observation.from_event(event)
            return self.observe(obs, now) if obs is not None else []
        if kind == "quota":
            until = _finite(event.get("until"))
            if until is not None and "key" in event:
                ep = self.endpoint(str(event["key"]))
                # A reset days away is a provider's quirk, not a plan: cap it.
                ep.quota_until = max(ep.quota_until, min(until, now + 86_400))
        elif kind == "abandon":
            return self._apply_abandon(event, now)
        elif kind == "req":
            at = _finite(event.get("at", now))
            with contextlib.suppress(TypeError, ValueError):
                count = _small_int(event.get("count", 1))
                if at is not None:
                    self._requests.append((min(at, now + _CLOCK_SKEW_S), count))
        return []

    def observe(self, obs: Observation, now: float) -> list[tuple[str, Transition]]:
        if obs.at > now + _CLOCK_SKEW_S:
            obs = replace(obs, at=now)  # windows evict in time order: no event from the future
        ep = self.endpoint(obs.key)
        if obs.ladder:
            ep.routes.add((obs.ladder, obs.rung))
        if obs.attempt > 1 and not obs.probe:
            self._retries.append(obs.at)
        if obs.at < ep.cleared_at:
            # From before probes closed the circuit (a replay after a bus reconnect, a slow
            # relay): it describes the outage that is over, not the endpoint now.
            return [(obs.key, t) for t in ep.circuit.drain_transitions()]
        if obs.failure is not None and obs.failure not in _IGNORED:
            ep.last_trip = (obs.at, obs.failure)
        ep.samples.append(_Sample(obs.at, obs.failure, obs.latency_s, obs.output_tokens, obs.task, obs.stream))
        ep.unscored += 1
        healthy = obs.failure is None
        if healthy and obs.latency_s is not None and self._is_well(ep, now):
            self._learn_baseline(ep, obs.at, obs.stream, obs.latency_s)
        self._fold_baseline(ep, now)
        if healthy and obs.output_tokens is not None and obs.task and not obs.probe and self._is_well(ep, now):
            self._learn_tokens(ep, obs.task, obs.output_tokens)
        outcome = self._outcome(ep, obs, now)
        if outcome is Outcome.SLOW:
            ep.last_trip = (obs.at, Failure.TIMEOUT)
        # Timer transitions first: they fell due before this result.
        transitions = ep.circuit.drain_transitions()
        transitions += ep.circuit.record(now, outcome)
        if any(t.target is CircuitState.CLOSED for t in transitions):
            # Probes proved the endpoint well again: the window's samples describe the outage,
            # not the endpoint now, and would keep traffic away for another whole window.
            ep.samples.clear()
            ep.score_cache = None
            ep.off_until.clear()
            ep.slo_breach_since = None
            ep.cleared_at = now
        transitions += self._open_if_abandoned(ep, now)
        return [(obs.key, t) for t in transitions]

    def _open_if_abandoned(self, ep: Endpoint, now: float) -> list[Transition]:
        """A score below every impact class's threshold leaves no traffic on the endpoint: say
        so with an open circuit, whose probes are then the way back. (Left closed, the frozen
        score would keep it idle until its samples aged out, then send every class back blind.)"""
        if ep.circuit.state(now) is not CircuitState.CLOSED:
            return []
        score = self.score(ep, now)
        if score.samples < self.settings.min_samples or score.value >= self.settings.leave_below.revenue_critical:
            return []
        ep.last_trip = (now, score.worst())
        # Replicas judge the score at slightly different moments (and from caches of different
        # ages): the first to see it tells the others, so the fleet opens, probes and closes as one.
        self._outbox.append(
            {"k": "abandon", "key": ep.key, "at": now, "score": round(score.value, 3), "reason": score.worst().value}
        )
        return ep.circuit.force_open(now, _degraded(score.value))

    def _apply_abandon(self, event: dict[str, Any], now: float) -> list[tuple[str, Transition]]:
        at, score = _finite(event.get("at")), _finite(event.get("score"))
        key, reason = event.get("key"), event.get("reason")
        # Older than open_s: the sender has moved on (half-open or closed) since; opening now
        # would put this replica out of step with it, not in.
        if at is None or score is None or not isinstance(key, str) or at < now - self.settings.circuit.open_s:
            return []
        if at > now + _CLOCK_SKEW_S:
            return []  # a clock far ahead: its news could never look old; this replica sees for itself
        ep = self.endpoint(key)
        last = ep.circuit.last_transition
        if ep.circuit.state(now) is not CircuitState.CLOSED or (last is not None and last.at > at - _CLOCK_SKEW_S):
            return []  # opened already, or not clearly newer than what this circuit did since
        try:
            failure = Failure(str(reason))
        except ValueError:
            failure = Failure.SERVER_ERROR
        ep.last_trip = (at, failure)
        return [(key, t) for t in ep.circuit.force_open(now, _degraded(score))]

    def drain_outbox(self) -> list[dict[str, Any]]:
        """Events this replica owes the bus (an abandonment it saw first)."""
        out, self._outbox = self._outbox, []
        return out

    def _learn_baseline(self, ep: Endpoint, at: float, stream: bool, latency: float) -> None:
        """A healthy answer teaches the baseline only once it is a window old (the first few
        teach at once, so there is a baseline): a slide within one window — a brownout — can
        then never drag the baseline it is judged by."""
        running = ep.baselines.setdefault(stream, _Running())
        if running.n < self.settings.min_samples:
            running.add(latency, _BASELINE_ALPHA)
        else:
            ep.unlearned.append((at, stream, latency))

    def _fold_baseline(self, ep: Endpoint, now: float) -> None:
        cutoff = now - self.settings.window_s
        while ep.unlearned and ep.unlearned[0][0] <= cutoff:
            _, stream, latency = ep.unlearned.popleft()
            running = ep.baselines.setdefault(stream, _Running())
            # Only answers close to it teach it; it rises slowly and falls fast.
            if latency <= running.mean * _BASELINE_BAND:
                running.add(latency, _BASELINE_UP if latency > running.mean else _BASELINE_ALPHA, by_count=False)

    def _learn_tokens(self, ep: Endpoint, task: str, tokens: int) -> None:
        """The task's usual output size; an answer far outside it (the collapse the z-score
        is there to see) does not teach it."""
        usual = ep.tokens.setdefault(task, _Running())
        if usual.n >= _TOKEN_MIN_HISTORY:
            sigma = max(math.sqrt(usual.var), 1.0)
            if abs(tokens - usual.mean) > _TOKEN_Z_OK * sigma:
                return
        usual.add(float(tokens), _BASELINE_ALPHA)

    def _outcome(self, ep: Endpoint, obs: Observation, now: float) -> Outcome:
        if obs.failure in _IGNORED:
            return Outcome.IGNORED
        if obs.failure is not None:
            return Outcome.FAILURE
        baseline = self.baseline(ep, obs.stream)
        factor = self.settings.circuit.slow_call_factor
        if ep.circuit.state(now) is CircuitState.HALF_OPEN:
            # To close, a probe must answer within the latency SLO: a circuit opened for a
            # latency score would otherwise close on probes the score still calls slow.
            factor = min(factor, self.settings.latency_slo_factor)
        if obs.latency_s is not None and baseline is not None and obs.latency_s > baseline * factor:
            return Outcome.SLOW
        return Outcome.SUCCESS

    def _is_well(self, ep: Endpoint, now: float) -> bool:
        """Well enough to learn what normal looks like from: a baseline learned during a
        brownout's early, error-laden minutes would hide the slowdown that follows."""
        return ep.circuit.state(now) is CircuitState.CLOSED and self.score(ep, now).errors >= _WELL

    def quota(self, key: str, until: float) -> dict[str, Any]:
        """A quota event: the endpoint has (next to) no requests left until `until`."""
        return {"k": "quota", "key": key, "until": until}

    # ---- what decide asks ----------------------------------------------------------------------

    def usable(self, key: str, impact: Impact, now: float, *, first: bool) -> Unusable | None:
        """May this request use the endpoint? `first` says whether it would be the request's
        first rung: only then may a half-open circuit admit it as a probe."""
        ep = self.endpoints.get(key)
        if ep is None:
            return None  # never seen: nothing against it
        if ep.quota_until > now:
            return Unusable(Failure.RATE_LIMITED)
        state = ep.circuit.state(now)
        admitted = (
            state is CircuitState.HALF_OPEN and first and self.settings.circuit.live_half_open and ep.circuit.allow(now)
        )
        self._pending.extend((key, t) for t in ep.circuit.drain_transitions())
        if state is CircuitState.OPEN or (state is CircuitState.HALF_OPEN and not admitted):
            return Unusable(ep.last_trip[1] if ep.last_trip else Failure.SERVER_ERROR)
        if admitted:
            return None
        score = self.score(ep, now)
        threshold = self.settings.leave_below.for_impact(impact)
        off_until = ep.off_until.get(impact, 0.0)
        if score.value < threshold:
            # Hysteresis: once this impact class left, it stays away at least open_s.
            ep.off_until[impact] = now + self.settings.circuit.open_s
            return Unusable(score.worst())
        if off_until > now:
            return Unusable(score.worst() if score.samples else Failure.SERVER_ERROR)
        if impact is not Impact.REVENUE_CRITICAL and self.slo_degraded(ep, now):
            return Unusable(Failure.TIMEOUT)
        return None

    def half_open(self, key: str, now: float) -> bool:
        ep = self.endpoints.get(key)
        return ep is not None and ep.circuit.state(now) is CircuitState.HALF_OPEN

    def drain_transitions(self) -> list[tuple[str, Transition]]:
        """Transitions that timers caused while decide asked (OPEN → HALF_OPEN, hung probes)."""
        pending, self._pending = self._pending, []
        return pending

    def retries_allowed(self, now: float) -> bool:
        """Fleet-wide retry budget: extra tries stay within ratio x requests + floor."""
        requests, retries = self._budget_counts(now)
        return retries < self.settings.retry_budget_ratio * requests + self.settings.retry_budget_floor

    def _budget_counts(self, now: float) -> tuple[int, int]:
        cutoff = now - self.settings.retry_budget_window_s
        while self._requests and self._requests[0][0] < cutoff:
            self._requests.popleft()
        _trim(self._retries, cutoff)
        return sum(n for _, n in self._requests), len(self._retries)

    # ---- scores ------------------------------------------------------------------------------

    def baseline(self, ep: Endpoint, stream: bool) -> float | None:
        """What a healthy answer takes (configured, else learned), never below the floor."""
        if ep.configured_baseline_s is not None:
            return max(ep.configured_baseline_s, self.settings.latency_floor_s)
        running = ep.baselines.get(stream)
        if running is None or running.n < self.settings.min_samples:
            return None
        return max(running.mean, self.settings.latency_floor_s)

    def score(self, ep: Endpoint, now: float) -> Score:
        # Computing a score walks the whole window: reuse it while it is young and few new
        # samples arrived (under 5 % of the window; in a small window every sample counts).
        cached = ep.score_cache
        fresh = ep.unscored < max(1, len(ep.samples) // 20)
        if cached is not None and fresh and now - cached[0] < _SCORE_TTL_S:
            return cached[1]
        score = self._compute_score(ep, now)
        ep.score_cache = (now, score)
        ep.unscored = 0
        return score

    def _compute_score(self, ep: Endpoint, now: float) -> Score:
        cutoff = now - self.settings.window_s
        while ep.samples and ep.samples[0].at < cutoff:
            ep.samples.popleft()
        counted = [s for s in ep.samples if s.failure not in _IGNORED]
        if len(counted) < self.settings.min_samples:
            return HEALTHY
        transport = [s for s in counted if s.failure is not None and s.failure not in _CONTRACT]
        answered = [s for s in counted if s.failure is None or s.failure in _CONTRACT]
        errors = 1.0 - len(transport) / len(counted)
        schema = 1.0 - (sum(1 for s in answered if s.failure is not None) / len(answered)) if answered else 1.0
        latency, p95 = self._latency_component(ep, counted)
        tokens = self._token_component(ep, answered)
        value = max(0.0, min(1.0, errors * schema * latency * tokens))
        return Score(value, errors, schema, latency, tokens, len(counted), p95)

    def _latency_component(self, ep: Endpoint, samples: list[_Sample]) -> tuple[float, float | None]:
        worst = 1.0
        p95_any: float | None = None
        for stream in (False, True):
            lat = sorted(s.latency_s for s in samples if s.latency_s is not None and s.stream is stream)
            if len(lat) < self.settings.min_samples:
                continue
            p95 = lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)]
            p95_any = p95 if p95_any is None else max(p95_any, p95)
            baseline = self.baseline(ep, stream)
            if baseline is None or baseline <= 0:
                continue
            factor = self.settings.latency_slo_factor
            ratio = p95 / baseline
            if ratio > factor:
                worst = min(worst, max(0.0, 1.0 - (ratio - factor) / (factor * (_LATENCY_ZERO_AT - 1))))
        return worst, p95_any

    def _token_component(self, ep: Endpoint, answered: list[_Sample]) -> float:
        worst = 1.0
        by_task: dict[str, list[int]] = {}
        for s in answered:
            if s.failure is None and s.tokens is not None and s.task:
                by_task.setdefault(s.task, []).append(s.tokens)
        for task, counts in by_task.items():
            usual = ep.tokens.get(task)
            if usual is None or usual.n < _TOKEN_MIN_HISTORY or len(counts) < self.settings.min_samples:
                continue
            sigma = max(math.sqrt(usual.var), 1.0)
            z = abs(sum(counts) / len(counts) - usual.mean) / sigma
            if z > _TOKEN_Z_OK:
                worst = min(worst, max(0.0, 1.0 - (z - _TOKEN_Z_OK) / (_TOKEN_Z_ZERO - _TOKEN_Z_OK)))
        return worst

    def slo_degraded(self, ep: Endpoint, now: float) -> bool:
        """p95 over latency_slo_factor x baseline, continuously for latency_slo_s."""
        score = self.score(ep, now)
        breached = score.latency < 1.0
        if not breached:
            ep.slo_breach_since = None
            return False
        if ep.slo_breach_since is None:
            ep.slo_breach_since = now
        return now - ep.slo_breach_since >= self.settings.latency_slo_s

    # ---- visibility ----------------------------------------------------------------------------

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
                    "baseline_s": {
                        "json": self.baseline(ep, False),
                        "stream": self.baseline(ep, True),
                    },
                    "slo_degraded": self.slo_degraded(ep, now),
                    "quota_until": ep.quota_until if ep.quota_until > now else None,
                    "last_trip": {"at": ep.last_trip[0], "reason": ep.last_trip[1].value} if ep.last_trip else None,
                }
            )
        requests, retries = self._budget_counts(now)
        return {
            "rungs": rungs,
            "retry_budget": {
                "window_s": self.settings.retry_budget_window_s,
                "requests": requests,
                "retries": retries,
                "allowed": self.settings.retry_budget_ratio * requests + self.settings.retry_budget_floor,
            },
        }


def _trim(times: deque[float], cutoff: float) -> None:
    while times and times[0] < cutoff:
        times.popleft()
