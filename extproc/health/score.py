"""The degradation score (H2): one number 0-1 per endpoint over a rolling window, the product of
error rate, schema conformance, latency against the endpoint's baseline, and output size against
the task class's usual answers. Pure: samples and baselines in, a Score out.

Latency is judged like with like, two ways, and the worse one counts:
* the tail: the window's p95 against `latency_slo_factor` x the healthy p95 (the SLO);
* the body: the median of the recent answers (the last 1/20 of the window, at least RECENT of
  them) against `latency_slo_factor` x the healthy median, and never below the healthy p95. The
  window's p95 needs 5 % of a whole window to be slow, so it lags a brownout by tens of seconds;
  the recent median moves as soon as the typical answer slows, yet a healthy endpoint cannot move
  it by chance: over half of its recent answers would have to be slower than its own p95.
Only answers (and timeouts, the least an answer would have taken) carry latency: a 503 that came
back in 50 ms says nothing about how long answers take (the error rate counts it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ..core import Failure
from ..policy import HealthSettings
from .baseline import Baseline, nearest_rank

# Failures that say nothing about the endpoint: the request's own fault or its content.
IGNORED = frozenset({Failure.CLIENT_ERROR, Failure.SAFETY_BLOCK, Failure.CONTEXT_OVERFLOW})
# The answer arrived but broke the contract: counted by the schema-conformance component.
CONTRACT = frozenset({Failure.SCHEMA_ERROR, Failure.QUALITY_REGRESSION, Failure.TOOL_MISMATCH})
LATENCY_ZERO_AT = 2.0  # the latency component reaches 0 at 2 x its threshold
RECENT = 8  # the fewest answers the body's median is taken over
RECENT_SHARE = 1 / 20  # ...or those in this share of the window before the newest, if more
# Failures whose latency describes how long an answer takes (a timeout: at least that long).
TIMED = frozenset({Failure.TIMEOUT, Failure.STREAM_INTERRUPTED}) | CONTRACT
TOKEN_Z_OK = 2.0
TOKEN_Z_ZERO = 6.0
TOKEN_MIN_HISTORY = 20


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


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    failure: Failure | None
    latency_s: float | None
    tokens: int | None
    task: str
    stream: bool


@dataclass
class Running:
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


def degraded_reason(score: float) -> str:
    """The reason a circuit opens when no impact class would use its endpoint any more."""
    return f"degraded: score {score:.2f}"


def compute_score(
    samples: Iterable[Sample],
    settings: HealthSettings,
    baseline: Callable[[bool], Baseline | None],
    usual_tokens: Callable[[str], Running | None],
) -> Score:
    """The score of the samples in the window (the caller drops older ones)."""
    counted = [s for s in samples if s.failure not in IGNORED]
    if len(counted) < settings.min_samples:
        return HEALTHY
    transport = [s for s in counted if s.failure is not None and s.failure not in CONTRACT]
    answered = [s for s in counted if s.failure is None or s.failure in CONTRACT]
    errors = 1.0 - len(transport) / len(counted)
    schema = 1.0 - (sum(1 for s in answered if s.failure is not None) / len(answered)) if answered else 1.0
    latency, p95 = _latency_component(counted, settings, baseline)
    tokens = _token_component(answered, settings, usual_tokens)
    value = max(0.0, min(1.0, errors * schema * latency * tokens))
    return Score(value, errors, schema, latency, tokens, len(counted), p95)


def _latency_component(
    samples: list[Sample], settings: HealthSettings, baseline: Callable[[bool], Baseline | None]
) -> tuple[float, float | None]:
    worst = 1.0
    p95_any: float | None = None
    factor = settings.latency_slo_factor
    for stream in (False, True):
        # In arrival order: the newest last.
        timed = [
            (s.at, s.latency_s)
            for s in samples
            if s.latency_s is not None and s.stream is stream and (s.failure is None or s.failure in TIMED)
        ]
        if len(timed) < settings.min_samples:
            continue
        p95 = _window_p95(sorted(latency for _, latency in timed))
        p95_any = p95 if p95_any is None else max(p95_any, p95)
        base = baseline(stream)
        if base is None or base.p95 <= 0:
            continue
        since = timed[-1][0] - settings.window_s * RECENT_SHARE
        last = len(timed) - RECENT
        recent = sorted(latency for i, (at, latency) in enumerate(timed) if i >= last or at >= since)
        median = nearest_rank(recent, 0.5)
        worst = min(worst, _over(p95, factor * base.p95), _over(median, max(base.p95, factor * base.p50)))
    return worst, p95_any


# Below this many answers a window's nearest-rank p95 is its largest: one slow answer of a
# healthy lognormal endpoint (a 1-in-1000 tail) would set the p95 alone and drive the score to 0.
_ONE_OUTLIER_IS_THE_P95: Final = 20


def _window_p95(ordered: list[float]) -> float:
    """The window's p95; under 20 answers its second largest, so that it takes two slow answers."""
    if len(ordered) < _ONE_OUTLIER_IS_THE_P95:
        return ordered[max(0, len(ordered) - 2)]
    return nearest_rank(ordered, 0.95)


def _over(value: float, threshold: float) -> float:
    """1.0 up to the threshold, falling to 0 at LATENCY_ZERO_AT x it."""
    ratio = value / threshold
    return 1.0 if ratio <= 1 else max(0.0, 1.0 - (ratio - 1) / (LATENCY_ZERO_AT - 1))


def _token_component(
    answered: list[Sample], settings: HealthSettings, usual_tokens: Callable[[str], Running | None]
) -> float:
    worst = 1.0
    by_task: dict[str, list[int]] = {}
    for s in answered:
        if s.failure is None and s.tokens is not None and s.task:
            by_task.setdefault(s.task, []).append(s.tokens)
    for task, counts in by_task.items():
        usual = usual_tokens(task)
        if usual is None or usual.n < TOKEN_MIN_HISTORY or len(counts) < settings.min_samples:
            continue
        sigma = max(math.sqrt(usual.var), 1.0)
        z = abs(sum(counts) / len(counts) - usual.mean) / sigma
        if z > TOKEN_Z_OK:
            worst = min(worst, max(0.0, 1.0 - (z - TOKEN_Z_OK) / (TOKEN_Z_ZERO - TOKEN_Z_OK)))
    return worst
