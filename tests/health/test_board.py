"""The health board: degradation scores, departure by impact class, baselines, gates, the retry
budget, and the sidecar/decide glue that asks the board which rungs a request may use."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extproc.core import (
    Abandoned,
    Dialect,
    Failure,
    FakeClock,
    Impact,
    Observation,
    QuotaSignal,
    RequestsDecided,
    decode_event,
)
from extproc.core.names import META_DECISION, endpoint_key
from extproc.filters.decide import DecideProcessor
from extproc.filters.effects import RequestCounted
from extproc.health.board import Board
from extproc.health.circuit import CircuitState, Transition
from extproc.health.score import HEALTHY, Score
from extproc.policy import CircuitSettings, HealthSettings, LeaveBelow, Policy
from extproc.routing.ladder import RequestFeatures, Route, choose
from extproc.runtime.sidecar import Sidecar
from tests.builders import CLIENT_KEY, decide_fields, dynamic_metadata, make_policy, make_sidecar, request_headers
from tests.core.test_events import well_typed_event

T0 = 1_767_225_600.0  # wall seconds; FakeClock's default wall time
Z95 = 1.6448536269514722  # the standard normal's 95th percentile
KEY = "primary/gpt-4o"
# A circuit that never opens on its own, to look at scores without it.
QUIET = CircuitSettings(consecutive_failures=10_000, minimum_calls=10_000)
IMPACTS = list(Impact)  # revenue_critical first: the lowest threshold
# The circuit's own rules alone: with revenue_critical never leaving, a low score cannot open it.
NEVER_ABANDONED = LeaveBelow(revenue_critical=0)


def board(baseline: float | None = None, **overrides: Any) -> Board:
    """A board over KEY with a quiet circuit unless `circuit` is given."""
    settings_ = HealthSettings(**{"circuit": QUIET, **overrides})
    return Board(settings_, {KEY: baseline} if baseline is not None else None)


def ok(b: Board, at: float, times: int = 1, latency: float | None = 0.2, key: str = KEY, **kw: Any) -> None:
    for _ in range(times):
        b.observe(Observation(key, at, None, latency_s=latency, **kw), at)


def failed(b: Board, at: float, times: int = 1, failure: Failure = Failure.SERVER_ERROR, **kw: Any) -> None:
    for _ in range(times):
        b.observe(Observation(KEY, at, failure, **kw), at)


def score(b: Board, at: float, key: str = KEY) -> Score:
    """The endpoint's score as decide sees it at `at` (the board ticked first, as the runtime
    does), with its components rounded, so that 1 - 3/10 reads as 0.7."""
    b.tick(at)
    found = b.endpoint(key).scored[1]
    return replace(
        found,
        value=round(found.value, 9),
        errors=round(found.errors, 9),
        schema=round(found.schema, 9),
        latency=round(found.latency, 9),
        tokens=round(found.tokens, 9),
    )


def usable(b: Board, at: float, impact: Impact = Impact.CUSTOMER_FACING, first: bool = True) -> Failure | None:
    b.tick(at)  # as the runtime does before it asks
    found = b.usable(KEY, impact, at, first=first)
    return found.reason if found is not None else None


def baseline(b: Board, stream: bool = False) -> float | None:
    return b.baseline(b.endpoints[KEY], stream)


def lognormal(rng: random.Random, p95: float, sigma: float = 0.45) -> float:
    """A healthy LLM latency: lognormal with the given p95 (p95 / median = e^(1.645 sigma))."""
    return p95 * math.exp(sigma * (rng.gauss(0.0, 1.0) - Z95))


def learned(value: float = 1.0, times: int = 20, **overrides: Any) -> Board:
    """A board that learned a JSON baseline of `value` from healthy answers at T0 - 100."""
    b = board(**overrides)
    ok(b, T0 - 100, times, latency=value)
    return b


# Scores are cached for up to a second: read them at least that long after the last sample.
LATER = T0 + 1


# ---- the degradation score, one component at a time ---------------------------------------------


def test_an_endpoint_with_fewer_than_min_samples_scores_healthy() -> None:
    b = board(min_samples=5)
    failed(b, T0, 4)
    assert score(b, LATER) == HEALTHY
    failed(b, T0)
    assert score(b, LATER + 1).value == 0.0


def test_error_rate_alone() -> None:
    b = board()
    ok(b, T0, 7)
    failed(b, T0, 3, Failure.TIMEOUT)
    assert score(b, LATER) == Score(0.7, 0.7, 1.0, 1.0, 1.0, 10, 0.2)


@pytest.mark.parametrize("failure", [Failure.CLIENT_ERROR, Failure.SAFETY_BLOCK, Failure.CONTEXT_OVERFLOW])
def test_failures_about_the_request_itself_are_not_counted(failure: Failure) -> None:
    b = board()
    ok(b, T0, 5)
    failed(b, T0, 20, failure)
    assert score(b, LATER) == Score(1.0, 1.0, 1.0, 1.0, 1.0, 5, 0.2)


@pytest.mark.parametrize("failure", [Failure.SCHEMA_ERROR, Failure.QUALITY_REGRESSION, Failure.TOOL_MISMATCH])
def test_contract_breaks_lower_schema_conformance_not_the_error_rate(failure: Failure) -> None:
    b = board()
    ok(b, T0, 8)
    failed(b, T0, 2, failure)
    found = score(b, LATER)
    assert (found.errors, found.schema, found.value) == (1.0, 0.8, 0.8)
    assert found.worst() is Failure.SCHEMA_ERROR


def test_schema_conformance_is_over_answered_calls_only() -> None:
    b = board()
    ok(b, T0, 4)
    failed(b, T0, 1, Failure.SCHEMA_ERROR)
    failed(b, T0, 5, Failure.CONNECT_ERROR)
    found = score(b, LATER)
    assert (found.errors, found.schema, found.value) == (0.5, 0.8, 0.4)
    assert found.worst() is Failure.SERVER_ERROR


@pytest.mark.parametrize(
    ("latency", "component"), [(1.9, 1.0), (2.0, 1.0), (2.5, 0.75), (3.0, 0.5), (4.0, 0.0), (9, 0.0)]
)
def test_latency_component_falls_from_the_slo_factor_to_zero_at_twice_it(latency: float, component: float) -> None:
    b = board(baseline=1.0)  # the healthy p95; latency_slo_factor 2: 1.0 at 2 x baseline, 0.0 at 4 x
    # Under twenty answers the p95 is the second slowest (one outlier alone is not the p95)...
    ok(b, T0, 2, latency=latency)
    ok(b, T0, 8, latency=0.5)  # ...while the typical answer stays healthy
    found = score(b, LATER)
    assert (found.latency, found.p95_s) == (component, latency)
    if component < 1:
        assert found.worst() is Failure.TIMEOUT


@pytest.mark.parametrize(("latency", "component"), [(0.9, 1.0), (1.0, 1.0), (1.5, 0.5), (2.0, 0.0)])
def test_when_the_typical_answer_is_slower_than_the_healthy_p95_latency_falls_before_the_p95_breaches(
    latency: float, component: float
) -> None:
    # Every answer at 1.5 x the healthy p95 keeps the p95 inside the SLO (2 x), but half the
    # answers slower than a healthy endpoint's slowest 5 % is a slowdown: the body test sees it.
    b = board(baseline=1.0)
    ok(b, T0, 10, latency=latency)
    assert score(b, LATER).latency == component


def test_latency_is_judged_on_the_p95_so_one_outlier_in_twenty_is_tolerated() -> None:
    b = board(baseline=1.0)
    ok(b, T0, 19, latency=1.0)
    ok(b, T0, 1, latency=30.0)
    assert score(b, LATER).latency == 1.0
    ok(b, T0, 1, latency=30.0)
    assert score(b, LATER + 1).latency == 0.0


def test_latency_against_a_learned_baseline() -> None:
    b = learned(1.0)
    ok(b, T0, 10, latency=3.0)
    assert score(b, LATER).latency == pytest.approx(0.5)


def test_latency_counts_for_nothing_until_a_baseline_is_known() -> None:
    b = board()
    failed(b, T0, 10, Failure.SCHEMA_ERROR, latency_s=30.0)  # answered, slowly, but broken: teaches nothing
    assert baseline(b) is None
    found = score(b, LATER)
    assert (found.latency, found.p95_s) == (1.0, 30.0)


def test_a_millisecond_endpoint_is_judged_against_the_latency_floor() -> None:  # its p95 and its median
    b = board(baseline=0.01)  # latency_floor_s 0.5: answers up to 1 s are within the SLO
    ok(b, T0, 10, latency=0.9)
    assert baseline(b) == 0.5
    assert score(b, LATER).latency == 1.0


def test_without_a_floor_the_same_answers_are_slow() -> None:
    b = board(baseline=0.01, latency_floor_s=0)
    ok(b, T0, 10, latency=0.9)
    assert score(b, LATER).latency == 0.0


def test_a_learned_baseline_is_held_to_the_floor_too() -> None:
    b = learned(0.05)
    assert baseline(b) == 0.5


def test_streams_are_judged_against_their_own_baseline() -> None:
    b = board()
    ok(b, T0 - 100, 20, latency=4.0)  # whole JSON answers
    ok(b, T0 - 100, 20, latency=1.0, stream=True)  # first tokens
    ok(b, T0, 10, latency=3.0, stream=True)
    ok(b, T0, 10, latency=4.0)
    assert (baseline(b), baseline(b, stream=True)) == (4.0, 1.0)
    assert score(b, LATER).latency == pytest.approx(0.5)


def test_a_configured_baseline_applies_to_both_modes_and_is_never_relearned() -> None:
    b = board(baseline=2.0)
    ok(b, T0, 30, latency=0.6)
    ok(b, T0, 30, latency=0.6, stream=True)
    assert (baseline(b), baseline(b, stream=True)) == (2.0, 2.0)


def test_a_requested_rungs_configured_baseline_covers_every_model_of_its_provider() -> None:
    b = Board(HealthSettings(), {"primary/*": 3.0, "primary/gpt-4o-mini": 1.0})
    assert b.baseline(b.endpoint("primary/gpt-4o"), False) == 3.0
    assert b.baseline(b.endpoint("primary/gpt-4o-mini"), False) == 1.0
    assert b.baseline(b.endpoint("secondary/gpt-4o"), False) is None


def test_token_counts_need_twenty_answers_of_history() -> None:
    b = board(min_samples=1)
    ok(b, T0 - 100, 10, output_tokens=100, task="summarize")
    ok(b, T0, 5, output_tokens=5000, task="summarize")
    assert score(b, LATER).tokens == 1.0


def test_an_answer_far_from_the_tasks_usual_size_lowers_the_token_component() -> None:
    b = board(min_samples=1)
    ok(b, T0 - 100, 100, output_tokens=100, task="summarize")
    ok(b, T0, 1, output_tokens=1000, task="summarize")
    found = score(b, LATER)
    assert found.tokens < 1.0
    assert found.worst() is Failure.QUALITY_REGRESSION


def test_a_collapse_in_output_size_is_noticed_with_default_settings() -> None:
    # 200-token summaries for minutes, then every answer is 20 tokens (a truncating regression).
    b = board()
    rng = random.Random(7)
    for i in range(120):
        ok(b, T0 - 120 + i, output_tokens=round(rng.gauss(200, 10)), task="summarize")
    for i in range(60):
        ok(b, T0 + i, output_tokens=20, task="summarize")
    found = score(b, T0 + 61)
    assert found.tokens < 1.0
    assert found.worst() is Failure.QUALITY_REGRESSION


def test_each_task_is_judged_against_its_own_usual_output() -> None:
    b = board(min_samples=1)
    ok(b, T0 - 100, 30, output_tokens=100, task="classify")
    ok(b, T0 - 100, 30, output_tokens=2000, task="summarize")
    ok(b, T0, 5, output_tokens=2000, task="summarize")
    ok(b, T0, 5, output_tokens=100, task="classify")
    assert score(b, LATER).tokens == 1.0


def test_probe_answers_do_not_teach_the_usual_output() -> None:
    b = board()
    ok(b, T0, 30, output_tokens=5, task="summarize", probe=True)
    assert "summarize" not in b.endpoints[KEY].tokens


def test_components_multiply_into_the_score() -> None:
    b = board(baseline=1.0)
    ok(b, T0, 2, latency=2.5)
    ok(b, T0, 14, latency=0.5)
    failed(b, T0, 2, Failure.SCHEMA_ERROR)
    failed(b, T0, 2, Failure.TIMEOUT)
    found = score(b, LATER)
    # errors 18/20, schema 16/18, latency 0.75 (p95 2.5 s against 2 x the healthy p95 of 1 s)
    assert (found.errors, found.schema, found.latency) == (0.9, round(16 / 18, 9), 0.75)
    assert found.value == round(0.9 * 16 / 18 * 0.75, 9)
    assert found.worst() is Failure.TIMEOUT


def test_samples_leave_the_score_once_older_than_the_window() -> None:
    b = board(window_s=60)
    failed(b, T0, 10)
    assert score(b, T0 + 59).value == 0.0
    assert score(b, T0 + 61) == HEALTHY


def test_in_a_small_window_every_new_sample_refreshes_the_score() -> None:
    b = board(min_samples=5)
    ok(b, T0, 10)
    assert score(b, T0 + 1).value == 1.0
    failed(b, T0 + 1)
    assert score(b, T0 + 1.1).value == pytest.approx(10 / 11)
    b2 = board(min_samples=5)
    failed(b2, T0, 4)
    assert score(b2, T0) == HEALTHY
    failed(b2, T0)  # the fifth sample: min_samples reached, and it counts at once
    assert score(b2, T0).value == 0.0


def test_in_a_large_window_a_young_score_stands_until_5_per_cent_new_samples() -> None:
    b = board(min_samples=5)
    ok(b, T0, 100)
    assert score(b, T0 + 1).value == 1.0
    failed(b, T0 + 1, 4)
    assert score(b, T0 + 1.1).value == 1.0  # 4 new of 104: the young cached score stands
    failed(b, T0 + 1.1)
    assert score(b, T0 + 1.2).value == pytest.approx(100 / 105)


def test_a_cached_score_is_refreshed_after_a_second() -> None:
    b = board(min_samples=5)
    ok(b, T0, 100)
    assert score(b, T0 + 1).value == 1.0
    failed(b, T0 + 1, 2)
    assert score(b, T0 + 1.99).value == 1.0
    assert score(b, T0 + 2).value == pytest.approx(100 / 102)


# ---- departure by impact class -------------------------------------------------------------------


def test_an_endpoint_never_seen_is_usable() -> None:
    assert Board(HealthSettings()).usable("nobody/none", Impact.DEFERRABLE, T0, first=True) is None


@pytest.mark.parametrize(
    ("failures", "left"),
    [
        (0, set()),
        (3, set()),  # 0.7 is not below deferrable's 0.7
        (4, {Impact.DEFERRABLE}),  # 0.6
        (5, {Impact.DEFERRABLE, Impact.ASYNC_ACCEPTABLE}),  # 0.5
        (7, {Impact.DEFERRABLE, Impact.ASYNC_ACCEPTABLE, Impact.CUSTOMER_FACING}),  # 0.3
        (9, set(Impact)),  # 0.1
    ],
)
def test_low_stakes_traffic_leaves_a_sick_endpoint_first_and_revenue_critical_last(
    failures: int, left: set[Impact]
) -> None:
    b = board()
    ok(b, T0, 10 - failures)
    failed(b, T0, failures)
    found = {impact: usable(b, LATER, impact) for impact in IMPACTS}
    assert {impact: why for impact, why in found.items() if why is not None} == dict.fromkeys(
        left, Failure.SERVER_ERROR
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 30), st.integers(0, 30), st.sampled_from([Failure.TIMEOUT, Failure.SCHEMA_ERROR]))
def test_an_impact_class_leaves_exactly_when_the_score_is_below_its_threshold(
    good: int, bad: int, failure: Failure
) -> None:
    b = board()
    ok(b, T0, good)
    failed(b, T0, bad, failure)
    value = b.score(b.endpoint(KEY), LATER).value  # unrounded: 1 - 20/25 is just below 0.2
    left = [usable(b, LATER, impact) is not None for impact in IMPACTS]
    thresholds = b.settings.leave_below
    assert left == [value < thresholds.for_impact(impact) for impact in IMPACTS]
    assert left == sorted(left)  # once a class leaves, every lower-stakes class has left too


def test_a_class_that_left_stays_away_for_open_s_even_if_the_score_recovers() -> None:
    b = board(window_s=60, circuit=QUIET.model_copy(update={"open_s": 120}))
    ok(b, T0, 5)
    failed(b, T0, 5)  # 0.5: deferrable and async_acceptable leave
    assert usable(b, LATER, Impact.DEFERRABLE) is Failure.SERVER_ERROR
    assert usable(b, LATER, Impact.CUSTOMER_FACING) is None
    recovered = T0 + 70  # the bad samples left the window
    ok(b, recovered, 10)
    assert score(b, recovered + 1).value == 1.0
    assert usable(b, recovered + 1, Impact.DEFERRABLE) is not None
    # async_acceptable left too (0.5 is under its 0.6), asked or not; customer_facing never did
    assert usable(b, recovered + 1, Impact.ASYNC_ACCEPTABLE) is not None
    assert usable(b, recovered + 1, Impact.CUSTOMER_FACING) is None
    assert usable(b, LATER + 120 - 0.01, Impact.DEFERRABLE) is not None
    assert usable(b, LATER + 120, Impact.DEFERRABLE) is None


def test_a_quota_signal_skips_the_endpoint_for_everyone_until_the_reset() -> None:
    b = board()
    ok(b, T0, 10)
    b.apply(QuotaSignal(KEY, T0 + 30), T0)
    assert {usable(b, T0 + 29.9, impact) for impact in IMPACTS} == {Failure.RATE_LIMITED}
    assert usable(b, T0 + 30, Impact.REVENUE_CRITICAL) is None


def test_a_quota_signal_never_shortens_a_known_reset() -> None:
    b = board()
    b.apply(QuotaSignal(KEY, T0 + 60), T0)
    b.apply(QuotaSignal(KEY, T0 + 10), T0)
    assert usable(b, T0 + 30) is Failure.RATE_LIMITED


def test_an_open_circuit_is_unusable_for_everyone_with_its_last_trips_reason() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=5))
    failed(b, T0, 4, Failure.SERVER_ERROR)
    failed(b, T0 + 1, 1, Failure.TIMEOUT)
    assert b.endpoints[KEY].circuit.state(T0 + 1) is CircuitState.OPEN
    assert {usable(b, T0 + 2, impact) for impact in IMPACTS} == {Failure.TIMEOUT}


def test_failures_about_the_request_do_not_replace_the_last_trip() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=5))
    failed(b, T0, 5, Failure.RATE_LIMITED)
    failed(b, T0 + 1, 3, Failure.CLIENT_ERROR)
    assert usable(b, T0 + 2) is Failure.RATE_LIMITED
    assert b.endpoints[KEY].last_trip == (T0, Failure.RATE_LIMITED)


def test_a_circuit_opened_by_slow_answers_says_timeout() -> None:
    # Only 200s, all over slow_call_factor x baseline: the skip reason should say slow, not 5xx.
    b = board(baseline=1.0, circuit=CircuitSettings(minimum_calls=5, slow_call_factor=4))
    ok(b, T0, 5, latency=5.0)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.OPEN
    assert usable(b, T0 + 1) is Failure.TIMEOUT


def test_a_half_open_circuit_is_left_to_synthetic_probes_without_live_half_open() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=5, open_s=30, live_half_open=False))
    failed(b, T0, 5, Failure.CONNECT_ERROR)
    assert usable(b, T0 + 30, Impact.REVENUE_CRITICAL, first=True) is Failure.CONNECT_ERROR
    assert b.endpoints[KEY].circuit.state(T0 + 30) is CircuitState.HALF_OPEN


def test_live_half_open_admits_first_rung_requests_up_to_half_open_probes() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=5, open_s=30, half_open_probes=2, live_half_open=True))
    failed(b, T0, 5)
    at = T0 + 30
    assert usable(b, at, first=False) is Failure.SERVER_ERROR  # a later rung never probes
    assert usable(b, at, first=True) is None
    assert usable(b, at, first=True) is None  # asking takes nothing...
    b.admit(KEY, at)  # ...the request that goes there does
    assert usable(b, at, Impact.DEFERRABLE, first=True) is None  # a probe, whatever the class
    b.admit(KEY, at)
    assert usable(b, at, first=True) is Failure.SERVER_ERROR  # both probe slots taken
    assert b.endpoints[KEY].circuit.snapshot(at)["half_open_admitted"] == 2


def test_timer_transitions_are_handed_over_by_tick_stamped_when_due() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=5, open_s=30))
    failed(b, T0, 5)
    assert b.usable(KEY, Impact.CUSTOMER_FACING, T0 + 45, first=False) is not None  # a query moves nothing
    assert b.tick(T0 + 45) == [(KEY, Transition(T0 + 30, CircuitState.OPEN, CircuitState.HALF_OPEN, "open for 30s"))]
    assert b.tick(T0 + 46) == []


def test_a_circuit_closing_wipes_the_window_and_every_class_returns_at_once() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=10_000, minimum_calls=10, open_s=30, half_open_successes=2))
    ok(b, T0, 5)
    failed(b, T0, 4)
    assert usable(b, LATER, Impact.DEFERRABLE) is Failure.SERVER_ERROR  # score 5/9: deferrable left
    failed(b, LATER)  # 5 of 10 calls failed: the circuit opens
    assert b.endpoints[KEY].circuit.state(LATER) is CircuitState.OPEN
    at = LATER + 31
    ok(b, at, probe=True)
    moved = [t for _, t in b.observe(Observation(KEY, at, None, latency_s=0.2, probe=True), at)]
    assert moved[-1].target is CircuitState.CLOSED
    ep = b.endpoints[KEY]
    assert (len(ep.samples), ep.off_until, ep.slo_breach_since) == (0, {}, None)
    assert score(b, at) == HEALTHY
    assert {usable(b, at, impact) for impact in IMPACTS} == {None}


def test_a_score_below_every_class_threshold_opens_the_circuit() -> None:
    # QUIET: the failure-rate rules never fire; only the score can open it.
    b = board(baseline=1.0)
    ok(b, T0, 5, latency=1.0)
    moved = []
    for _ in range(10):
        moved += b.observe(Observation(KEY, T0, Failure.SERVER_ERROR), T0)
    # Score 5/15 = 0.33: deferrable and customer-facing traffic left, revenue-critical not yet.
    assert usable(b, T0, Impact.CUSTOMER_FACING) is Failure.SERVER_ERROR
    assert usable(b, T0, Impact.REVENUE_CRITICAL) is None
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.CLOSED and moved == []
    for _ in range(15):
        moved += b.observe(Observation(KEY, T0, Failure.SERVER_ERROR), T0)  # 5/30: under 0.2
    assert [(key, t.target) for key, t in moved] == [(KEY, CircuitState.OPEN)]
    assert moved[0][1].reason.startswith("degraded: score 0.")
    assert usable(b, T0, Impact.REVENUE_CRITICAL) is Failure.SERVER_ERROR
    # ... and its probes are the way back, not the score's samples ageing out.
    assert b.endpoints[KEY].circuit.state(T0 + 30) is CircuitState.HALF_OPEN


def test_the_open_for_a_low_score_names_the_component_pulling_it_down() -> None:
    b = board(baseline=1.0)
    ok(b, T0, 10, latency=3.9)  # p95 3.9 x baseline: the latency component near 0
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.OPEN
    assert usable(b, T0, Impact.REVENUE_CRITICAL) is Failure.TIMEOUT


def test_revenue_critical_that_never_leaves_keeps_a_low_scored_circuit_closed() -> None:
    b = board(baseline=1.0, leave_below=NEVER_ABANDONED)
    failed(b, T0, 30)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.CLOSED
    assert usable(b, T0, Impact.REVENUE_CRITICAL) is None


def test_a_circuit_that_probes_closed_is_not_reopened_by_the_outage_it_just_left() -> None:
    b = board(baseline=1.0, circuit=QUIET.model_copy(update={"open_s": 30, "half_open_successes": 2}))
    failed(b, T0, 30)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.OPEN
    at = T0 + 31
    ok(b, at, 2, latency=1.0, probe=True)
    assert b.endpoints[KEY].circuit.state(at) is CircuitState.CLOSED
    assert {usable(b, at, impact) for impact in IMPACTS} == {None}


def abandon_on(b: Board) -> Abandoned:
    """Drive b's score under every threshold; return the event it owes the bus."""
    failed(b, T0, 10)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.OPEN
    (event,) = b.drain_outbox()
    assert b.drain_outbox() == []
    return event


def test_the_replica_that_sees_an_abandonment_first_tells_the_others() -> None:
    event = abandon_on(board(baseline=1.0))
    assert event == Abandoned(KEY, T0, 0.0, Failure.SERVER_ERROR)
    other = board(baseline=1.0)  # has not seen (or not yet scored) the failures
    ok(other, T0, 3)
    moved = other.apply(event, T0 + 0.01)
    assert [(key, t.source, t.target, t.reason) for key, t in moved] == [
        (KEY, CircuitState.CLOSED, CircuitState.OPEN, "degraded: score 0.00")
    ]
    assert usable(other, T0 + 0.01, Impact.REVENUE_CRITICAL) is Failure.SERVER_ERROR
    assert other.drain_outbox() == []  # news passed on is not news again
    # Both now open for open_s from (nearly) the same instant: they probe and close as one.
    assert other.endpoints[KEY].circuit.state(T0 + 30.01) is CircuitState.HALF_OPEN


def test_an_abandonment_is_ignored_by_a_circuit_that_moved_since_or_is_not_closed() -> None:
    event = abandon_on(board(baseline=1.0))
    already = board(circuit=CircuitSettings(consecutive_failures=2, open_s=30))
    failed(already, T0 + 1, 2)
    assert already.apply(event, T0 + 2) == []  # open already: its own open_until stands
    recovered = board(circuit=CircuitSettings(consecutive_failures=2, open_s=5, half_open_successes=1))
    failed(recovered, T0 - 10, 2)
    ok(recovered, T0 + 1, probe=True)  # half-open, probed closed after the event was sent
    assert recovered.endpoints[KEY].circuit.state(T0 + 2) is CircuitState.CLOSED
    assert recovered.apply(event, T0 + 2) == []  # a replay of old news


def test_a_stale_abandonment_is_ignored() -> None:
    b = board()
    assert b.apply(Abandoned(KEY, T0 - 31, 0.1, Failure.TIMEOUT), T0) == []  # older than open_s
    assert KEY not in b.endpoints or b.endpoints[KEY].circuit.state(T0) is CircuitState.CLOSED


def test_an_abandonment_from_a_clock_far_ahead_is_ignored_and_a_replay_after_a_close_too() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=10_000, minimum_calls=10_000, open_s=30))
    assert b.apply(Abandoned(KEY, 1e15, 0.1, Failure.TIMEOUT), T0) == []
    ahead = Abandoned(KEY, T0 + 3, 0.1, Failure.SERVER_ERROR)  # a little ahead: within the skew allowed
    (moved,) = b.apply(ahead, T0)
    assert moved[1].target is CircuitState.OPEN and b.endpoints[KEY].last_trip == (T0 + 3, Failure.SERVER_ERROR)
    at = T0 + 31
    ok(b, at, 2, probe=True)
    assert b.endpoints[KEY].circuit.state(at) is CircuitState.CLOSED
    assert b.apply(ahead, at + 1) == []  # the same news again, after the close


def test_observations_from_before_probes_closed_the_circuit_do_not_reopen_it() -> None:
    # A replica's backlog replayed after a bus reconnect: failures stamped during the outage.
    b = board(baseline=1.0, circuit=CircuitSettings(consecutive_failures=5, open_s=30, half_open_successes=2))
    failed(b, T0, 5)
    at = T0 + 31
    ok(b, at, 2, latency=1.0, probe=True)
    assert b.endpoints[KEY].circuit.state(at) is CircuitState.CLOSED
    for i in range(10):
        b.observe(Observation(KEY, T0 + 5 + i, Failure.SERVER_ERROR), at + 1)
    assert b.endpoints[KEY].circuit.state(at + 1) is CircuitState.CLOSED
    assert score(b, at + 1) == HEALTHY and b.drain_outbox() == []
    failed(b, at + 2, 5)  # new failures still count
    assert b.endpoints[KEY].circuit.state(at + 2) is CircuitState.OPEN


@pytest.mark.parametrize("during", ["open", "half_open"])
def test_a_probe_must_answer_within_the_latency_slo_to_close(during: str) -> None:
    # latency_slo_factor 2, slow_call_factor 4: a probe at 3x the baseline is fine for a closed
    # circuit's rate, but does not prove an endpoint opened for its latency well again.
    settings = {"consecutive_failures": 5, "open_s": 30, "half_open_successes": 1, "slow_call_factor": 4}
    b = board(baseline=1.0, circuit=CircuitSettings(**settings), latency_slo_factor=2)
    failed(b, T0, 5)
    at = T0 + (10 if during == "open" else 31)
    b.observe(Observation(KEY, at, None, latency_s=3.0, probe=True), at)
    assert b.endpoints[KEY].circuit.snapshot(at)["half_open_successes"] == 0
    assert b.endpoints[KEY].circuit.state(T0 + 45) is CircuitState.HALF_OPEN  # the hold ended; no close
    moved = b.observe(Observation(KEY, T0 + 45, None, latency_s=1.9, probe=True), T0 + 45)
    assert moved[-1][1].target is CircuitState.CLOSED


def test_a_sidecar_publishes_the_abandonment_it_saw_first() -> None:
    quiet = {"consecutive_failures": 10_000, "minimum_calls": 10_000}  # only the score can open it
    sidecar = make_sidecar(make_policy(health={"circuit": quiet}))
    events: list[dict[str, Any]] = []
    sidecar.bus.subscribe(events.append)
    for _ in range(10):
        sidecar.apply([Observation(KEY, T0, Failure.SERVER_ERROR)])
    abandons = [e for e in events if e["k"] == "abandon"]
    assert [(e["key"], e["reason"]) for e in abandons] == [(KEY, "server_error")]


def test_an_observation_returns_the_transitions_it_caused_including_due_timers() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=2, open_s=30, half_open_successes=1))
    moved = []
    for at, failure in ((T0, Failure.TIMEOUT), (T0, Failure.TIMEOUT), (T0 + 40, None)):
        moved += b.observe(Observation(KEY, at, failure, latency_s=0.2), at)
    assert [(key, t.source, t.target, t.at) for key, t in moved] == [
        (KEY, CircuitState.CLOSED, CircuitState.OPEN, T0),
        (KEY, CircuitState.OPEN, CircuitState.HALF_OPEN, T0 + 30),
        (KEY, CircuitState.HALF_OPEN, CircuitState.CLOSED, T0 + 40),
    ]


# ---- slow calls and the circuit --------------------------------------------------------------------


def test_answers_over_slow_call_factor_times_the_baseline_count_for_the_failure_rate() -> None:
    b = board(
        baseline=1.0,
        circuit=CircuitSettings(minimum_calls=5, failure_rate_threshold=50, slow_call_factor=4),
        leave_below=NEVER_ABANDONED,
    )
    ok(b, T0, 3, latency=1.0)
    ok(b, T0, 2, latency=4.1)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.CLOSED
    ok(b, T0, 1, latency=4.1)  # 3 of 6
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.OPEN


def test_an_answer_at_exactly_slow_call_factor_is_not_slow() -> None:
    b = board(baseline=1.0, circuit=CircuitSettings(minimum_calls=5, slow_call_factor=4), leave_below=NEVER_ABANDONED)
    ok(b, T0, 10, latency=4.0)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.CLOSED


def test_slow_calls_are_measured_against_the_floored_baseline() -> None:
    b = board(baseline=0.01, circuit=CircuitSettings(minimum_calls=5, slow_call_factor=4), leave_below=NEVER_ABANDONED)
    ok(b, T0, 10, latency=1.9)  # 190 x the configured baseline, under 4 x the 0.5 s floor
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.CLOSED


def test_slow_calls_count_against_a_learned_baseline_too() -> None:
    b = learned(1.0, circuit=CircuitSettings(minimum_calls=5, slow_call_factor=4))
    ok(b, T0, 5, latency=4.5)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.OPEN


def test_nothing_is_slow_before_a_baseline_is_known() -> None:
    b = board(min_samples=5, circuit=CircuitSettings(minimum_calls=4))
    ok(b, T0, 4, latency=60.0)
    assert b.endpoints[KEY].circuit.state(T0) is CircuitState.CLOSED


# ---- learning the baseline -------------------------------------------------------------------------


def test_a_baseline_is_known_after_min_samples_healthy_answers() -> None:
    b = board(min_samples=5)
    ok(b, T0, 4, latency=1.0)
    assert baseline(b) is None
    ok(b, T0, 1, latency=1.0)
    assert baseline(b) == 1.0


def test_failed_tries_do_not_teach_the_baseline() -> None:
    b = learned(1.0)
    for _ in range(20):
        b.observe(Observation(KEY, T0, Failure.SCHEMA_ERROR, latency_s=1.1), T0)
    assert baseline(b) == 1.0


def test_after_the_first_twenty_an_answer_teaches_the_baseline_once_it_is_a_window_old() -> None:
    b = board()
    ok(b, T0 - 100, 19, latency=1.0)
    ok(b, T0 - 100, 1, latency=1.5)  # the twentieth: still taught at once
    assert baseline(b) == 1.5  # the p95 of fewer than 40 answers is their max
    ok(b, T0, 20, latency=2.0)
    assert baseline(b) == 1.5  # not yet
    ok(b, T0 + 61, 1, latency=1.0)
    assert baseline(b) == 2.0  # a window later, one of them joined (the history is thinned by time)
    assert b.endpoints[KEY].baselines[False].n == 21


def test_the_learned_baseline_is_the_healthy_p95_not_the_mean() -> None:
    # A healthy LLM endpoint: lognormal, p95 2.1 s (median 1 s). Its mean is about 1.1 s; the
    # window's p95 held to 2 x the mean would call it slow.
    rng = random.Random(7)
    b = board()
    for i in range(2000):
        at = T0 + i * 2.0
        ok(b, at, latency=lognormal(rng, p95=2.1))
    learned_ = b.latency_baseline(b.endpoints[KEY], False)
    assert learned_ is not None
    assert learned_.p95 == pytest.approx(2.1, rel=0.12)
    assert learned_.p50 == pytest.approx(1.0, rel=0.1)


def test_slow_answers_and_probes_do_not_teach_the_baseline() -> None:
    b = learned(1.0, circuit=CircuitSettings(slow_call_factor=4))
    ok(b, T0, 1, latency=4.5)  # slow: over 4 x the healthy p95
    ok(b, T0, 30, latency=0.2, probe=True)  # a tiny completion, not an answer
    ok(b, T0 + 61, 1, latency=1.0)
    assert b.endpoints[KEY].baselines[False].n == 20
    assert baseline(b) == 1.0


def test_a_window_that_ends_in_an_alarm_teaches_the_baseline_nothing() -> None:
    b = learned(1.0)
    ok(b, T0, 10, latency=1.1)  # waiting to teach
    assert len(b.endpoints[KEY].unlearned) == 10
    ok(b, T0 + 1, 20, latency=3.0)  # the typical answer 3 x the healthy p95: an alarm
    assert score(b, T0 + 2).latency < 1.0
    assert not b.endpoints[KEY].unlearned
    ok(b, T0 + 200, 1, latency=1.0)
    assert (baseline(b), b.endpoints[KEY].baselines[False].n) == (1.0, 20)


def test_a_busy_endpoints_history_spans_ten_windows() -> None:
    # 10 answers a second, 600 a window: at most 50 a window join, so 500 span ten windows.
    b = learned(1.0)
    for i in range(6000):  # ten windows; nine of them a window old
        ok(b, T0 + i * 0.1, latency=1.0)
    assert 9 * 40 <= b.endpoints[KEY].baselines[False].n - 20 <= 9 * 50 + 1


def test_a_sudden_brownout_does_not_move_the_baseline() -> None:
    b = learned(1.0)
    for i in range(200):
        ok(b, T0 + i * 0.25, latency=3.0 + i * 0.05)
    assert baseline(b) == 1.0
    assert score(b, T0 + 51).latency < 1.0


def test_answers_during_an_error_laden_period_do_not_teach() -> None:
    b = board()
    failed(b, T0, 5)
    ok(b, T0, 20, latency=5.0)  # errors 20/25 = 0.8 < 0.9
    assert b.endpoints[KEY].baselines == {}
    ok(b, T0 + 100, 10, latency=1.0)  # a clean window later
    assert baseline(b) == 1.0


def test_answers_while_the_circuit_is_not_closed_do_not_teach() -> None:
    b = board(circuit=CircuitSettings(consecutive_failures=5, open_s=30, half_open_successes=100))
    failed(b, T0, 5)
    ok(b, T0 + 30, 20, latency=9.0)
    assert b.endpoints[KEY].circuit.state(T0 + 30) is CircuitState.HALF_OPEN
    assert b.endpoints[KEY].baselines == {}


@settings(max_examples=80, deadline=None)
@given(rate=st.floats(0.001, 0.1), steps=st.integers(1, 200))
@example(rate=0.01, steps=150)
def test_a_latency_slide_within_one_window_cannot_drag_the_baseline(rate: float, steps: int) -> None:
    # However gently latency climbs, the baseline a minute ago should still be what it is judged by.
    b = learned(1.0, circuit=CircuitSettings())
    for i in range(1, steps + 1):
        ok(b, T0 + i * 0.25, latency=(1 + rate) ** i)  # all inside one 60 s window
    assert baseline(b) == 1.0


# ---- the latency SLO gate ---------------------------------------------------------------------------


def slow_tail(b: Board, at: float, times: int = 10) -> None:
    """`times` answers whose slowest fifth take 2.2 s while the rest are typical (0.5 s)."""
    ok(b, at, times // 5, latency=2.2)
    ok(b, at, times - times // 5, latency=0.5)


def test_a_sustained_slo_breach_marks_the_endpoint_degraded_except_for_revenue_critical() -> None:
    b = board(baseline=1.0, latency_slo_s=30)
    slow_tail(b, T0)  # p95 2.2 x the healthy p95: over the SLO, score still 0.9
    assert score(b, LATER).value == pytest.approx(0.9)
    assert usable(b, LATER, Impact.ASYNC_ACCEPTABLE) is None  # breached since T0, when the score showed it
    assert usable(b, T0 + 29.9, Impact.CUSTOMER_FACING) is None
    assert usable(b, T0 + 30) is Failure.TIMEOUT
    assert usable(b, T0 + 30, Impact.DEFERRABLE) is Failure.TIMEOUT
    assert usable(b, T0 + 30, Impact.REVENUE_CRITICAL) is None
    assert b.slo_degraded(b.endpoints[KEY], T0 + 30)


def test_an_slo_breach_that_ends_restarts_the_clock() -> None:
    b = board(baseline=1.0, latency_slo_s=30)
    slow_tail(b, T0)
    assert usable(b, LATER) is None  # breached since T0
    ok(b, T0 + 10, 200, latency=1.0)  # p95 back within the SLO
    assert usable(b, T0 + 11) is None
    assert b.endpoints[KEY].slo_breach_since is None
    slow_tail(b, T0 + 12, 300)  # breached again
    assert usable(b, T0 + 13) is None
    assert usable(b, LATER + 30) is None  # 30 s after the first breach began, 18 s into this one
    assert usable(b, T0 + 43) is Failure.TIMEOUT


# ---- the fleet-wide retry budget --------------------------------------------------------------------


def retry(b: Board, at: float, times: int = 1, **kw: Any) -> None:
    for _ in range(times):
        b.observe(Observation(KEY, at, None, latency_s=0.2, attempt=2, **kw), at)


def test_with_no_requests_the_floor_is_the_budget() -> None:
    b = board(retry_budget_floor=3)
    retry(b, T0, 2)
    assert b.retries_allowed(T0)
    retry(b, T0)
    assert not b.retries_allowed(T0)


def test_the_budget_grows_with_requests_by_the_ratio() -> None:
    b = board(retry_budget_ratio=0.2, retry_budget_floor=10)
    b.apply(RequestsDecided(T0, 100), T0)
    retry(b, T0, 29)
    assert b.retries_allowed(T0)  # 29 < 0.2 x 100 + 10
    retry(b, T0)
    assert not b.retries_allowed(T0)


def test_first_tries_and_probes_are_not_retries() -> None:
    b = board(retry_budget_floor=1)
    ok(b, T0, 50)
    retry(b, T0, 50, probe=True)
    assert b.retries_allowed(T0)


def test_retries_and_requests_leave_the_budget_with_its_window() -> None:
    b = board(retry_budget_window_s=10, retry_budget_floor=5, retry_budget_ratio=1)
    b.apply(RequestsDecided(T0, 100), T0)
    retry(b, T0 + 5, 105)
    assert not b.retries_allowed(T0 + 5)
    assert not b.retries_allowed(T0 + 14.9)  # requests gone at T0 + 10, retries still counted
    assert b.retries_allowed(T0 + 15.1)


def test_the_sidecar_publishes_requests_in_aggregate_and_counts_them_once() -> None:
    clock = FakeClock()
    sidecar = make_sidecar(make_policy(health={"retry_budget_ratio": 0.5, "retry_budget_floor": 0}), clock)
    events: list[dict[str, Any]] = []
    sidecar.bus.subscribe(events.append)
    for _ in range(10):
        sidecar.apply([RequestCounted()])
    clock.advance(0.25)
    sidecar.apply([RequestCounted()])
    assert [(e["k"], e["count"]) for e in events] == [("req", 1), ("req", 10)]
    assert sidecar.board.snapshot(clock.wall())["retry_budget"]["requests"] == 11
    for _ in range(5):
        sidecar.apply([Observation(KEY, clock.wall(), None, latency_s=0.2, attempt=2)])
    assert sidecar.retries_allowed()  # 5 < 5.5
    sidecar.apply([Observation(KEY, clock.wall(), None, latency_s=0.2, attempt=2)])
    assert not sidecar.retries_allowed()


def test_with_health_disabled_retries_are_always_allowed() -> None:
    sidecar = make_sidecar(make_policy(health={"enabled": False, "retry_budget_floor": 0}))
    sidecar.apply([Observation(KEY, T0, None, attempt=2)])
    assert sidecar.retries_allowed()
    assert sidecar.health_view(Impact.CUSTOMER_FACING) is None


# ---- events ----------------------------------------------------------------------------------------


def test_an_observation_survives_the_bus_as_an_event() -> None:
    obs = Observation(KEY, T0, Failure.TIMEOUT, 1.5, 12, "summarize", True, 2, False, "main", 1)
    assert decode_event(obs.encode()) == obs
    served = Observation(KEY, T0, None)
    assert decode_event(served.encode()) == served


def test_applying_an_observation_event_matches_observing_the_object() -> None:
    direct, via_bus = board(), board()
    for i in range(20):
        obs = Observation(KEY, T0 + i, Failure.TIMEOUT if i % 3 else None, 0.3, 50, "t", ladder="main")
        direct.observe(obs, obs.at)
        via_bus.apply(decode_event(obs.encode()), obs.at)
    assert direct.snapshot(T0 + 30) == via_bus.snapshot(T0 + 30)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["obs", "quota", "abandon", "req", "circuit", "probe"]).flatmap(well_typed_event), max_size=8
    )
)
def test_applying_any_event_that_decodes_never_raises(batch: list[Any]) -> None:
    b = board(circuit=CircuitSettings())
    for event in batch:
        b.apply(event, T0)
    b.tick(T0 + 1)
    b.snapshot(T0 + 1)
    b.retries_allowed(T0 + 1)
    for key in b.endpoints:
        b.usable(key, Impact.DEFERRABLE, T0 + 1, first=True)


# ---- what the board shows ---------------------------------------------------------------------------


def test_snapshot_shows_every_endpoint_and_the_retry_budget() -> None:
    b = board(baseline=1.0, circuit=CircuitSettings())
    for _ in range(9):
        b.observe(Observation(KEY, T0, None, latency_s=0.8, ladder="main", rung=0), T0)
    b.observe(Observation(KEY, T0, Failure.TIMEOUT, ladder="tool_check", rung=0, attempt=2), T0)
    b.apply(QuotaSignal("secondary/claude-fallback", T0 + 30), T0)
    b.apply(RequestsDecided(T0, 20), T0)
    assert b.snapshot(T0 + 1) == {
        "rungs": [
            {
                "endpoint": KEY,
                "routes": ["main/0", "tool_check/0"],
                "circuit": {
                    "state": "closed",
                    "failure_rate": 10.0,
                    "calls": 10,
                    "failures": 1,
                    "consecutive_failures": 1,
                    "open_until": None,
                    "half_open_admitted": 0,
                    "half_open_successes": 0,
                    "last_transition": None,
                },
                "score": 0.9,
                "components": {"errors": 0.9, "schema": 1.0, "latency": 1.0, "tokens": 1.0},
                "samples": 10,
                "p95_s": 0.8,
                "baseline_s": {"json": 1.0, "stream": 1.0},
                "slo_degraded": False,
                "quota_until": None,
                "last_trip": {"at": T0, "reason": "timeout"},
            },
            {
                "endpoint": "secondary/claude-fallback",
                "routes": [],
                "circuit": {
                    "state": "closed",
                    "failure_rate": None,
                    "calls": 0,
                    "failures": 0,
                    "consecutive_failures": 0,
                    "open_until": None,
                    "half_open_admitted": 0,
                    "half_open_successes": 0,
                    "last_transition": None,
                },
                "score": 1.0,
                "components": {"errors": 1.0, "schema": 1.0, "latency": 1.0, "tokens": 1.0},
                "samples": 0,
                "p95_s": None,
                "baseline_s": {"json": None, "stream": None},
                "slo_degraded": False,
                "quota_until": T0 + 30,
                "last_trip": None,
            },
        ],
        "retry_budget": {"window_s": 10.0, "requests": 20, "retries": 1, "allowed": 14.0},
        "evictions": 0,
    }


def test_endpoint_keys_are_provider_slash_model() -> None:
    assert endpoint_key("small", "meta-llama/Llama-3.1-8B") == "small/meta-llama/Llama-3.1-8B"


# ---- the sidecar's health view and the ladder choice ------------------------------------------------

FALLBACK = "secondary/claude-fallback"
SMALL = "small/small-model"


def features(impact: Impact = Impact.CUSTOMER_FACING, model: str = "gpt-4o") -> RequestFeatures:
    return RequestFeatures(
        dialect=Dialect.OPENAI,
        model=model,
        stream=False,
        json_mode=False,
        max_tokens=None,
        body_bytes=400,
        tenant="t",
        task="default",
        impact=impact,
        has_tools=False,
    )


def health_policy(**health: Any) -> Policy:
    return make_policy(health={"circuit": {"consecutive_failures": 3, "open_s": 30}, **health})


def break_endpoint(sidecar: Sidecar, key: str, failure: Failure = Failure.SERVER_ERROR) -> None:
    for _ in range(3):
        sidecar.apply([Observation(key, sidecar.clock.wall(), failure)])


def route(sidecar: Sidecar, impact: Impact = Impact.CUSTOMER_FACING) -> Route:
    found = choose(sidecar.policy, features(impact), sidecar.health_view(impact))
    assert isinstance(found, Route)
    return found


def test_the_health_view_is_none_when_health_is_disabled() -> None:
    sidecar = make_sidecar(make_policy(health={"enabled": False}))
    break_endpoint(sidecar, KEY)
    assert sidecar.health_view(Impact.DEFERRABLE) is None
    assert route(sidecar).rungs == (0, 1, 2)


def test_the_health_view_answers_with_the_boards_reason() -> None:
    sidecar = make_sidecar(health_policy())
    break_endpoint(sidecar, KEY, Failure.TIMEOUT)
    view = sidecar.health_view(Impact.REVENUE_CRITICAL)
    assert view is not None
    assert (view(KEY, True), view(FALLBACK, True)) == (Failure.TIMEOUT, None)


def test_choose_skips_an_unusable_first_rung_and_says_why() -> None:
    sidecar = make_sidecar(health_policy())
    break_endpoint(sidecar, KEY, Failure.TIMEOUT)
    found = route(sidecar)
    assert (found.rungs, found.cluster, found.skip_reason, found.tries) == ((1, 2), "rw.main.6", Failure.TIMEOUT, 4)


def test_choose_drops_an_unusable_later_rung_without_a_skip_reason() -> None:
    sidecar = make_sidecar(health_policy())
    break_endpoint(sidecar, FALLBACK)
    found = route(sidecar)
    assert (found.rungs, found.skip_reason) == ((0, 2), None)


def test_the_skip_reason_is_the_first_unusable_rungs() -> None:
    sidecar = make_sidecar(health_policy())
    sidecar.apply([QuotaSignal(KEY, sidecar.clock.wall() + 60)])
    break_endpoint(sidecar, FALLBACK, Failure.CONNECT_ERROR)
    found = route(sidecar)
    assert (found.rungs, found.skip_reason) == ((2,), Failure.RATE_LIMITED)


def test_when_every_rung_is_unusable_the_whole_ladder_is_still_tried() -> None:
    sidecar = make_sidecar(health_policy())
    for key in (KEY, FALLBACK, SMALL):
        break_endpoint(sidecar, key)
    found = route(sidecar, Impact.REVENUE_CRITICAL)
    assert (found.rungs, found.skip_reason, found.tries) == ((0, 1, 2), None, 6)


def test_a_half_open_rung_behind_an_unusable_first_rung_may_take_a_live_probe() -> None:
    policy = make_policy(health={"circuit": {"consecutive_failures": 3, "open_s": 30, "live_half_open": True}})
    clock = FakeClock()
    sidecar = make_sidecar(policy, clock)
    break_endpoint(sidecar, FALLBACK)
    clock.advance(30)
    sidecar.apply([QuotaSignal(KEY, clock.wall() + 60)])
    found = route(sidecar)
    assert (found.rungs, found.skip_reason) == ((1, 2), Failure.RATE_LIMITED)


def test_the_view_announces_timer_transitions_on_the_bus_and_in_metrics() -> None:
    clock = FakeClock()
    sidecar = make_sidecar(health_policy(), clock)
    break_endpoint(sidecar, KEY)
    events: list[dict[str, Any]] = []
    sidecar.bus.subscribe(events.append)
    clock.advance(31)
    route(sidecar)
    assert [(e["k"], e["key"], e["from"], e["to"]) for e in events] == [("circuit", KEY, "open", "half_open")]
    assert events[0]["at"] == T0 + 30
    counts = {
        (s.labels["endpoint"], s.labels["state"]): s.value
        for metric in sidecar.metrics.circuit_transitions.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert counts == {(KEY, "open"): 1.0, (KEY, "half_open"): 1.0}


# ---- decide: the canary share and the retry budget ---------------------------------------------------


def decide(sidecar: Sidecar, impact: Impact) -> dict[str, Any]:
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        "content-length": "400",
        "x-rungway-impact": impact,
        "authorization": f"Bearer {CLIENT_KEY}",
    }
    processor = DecideProcessor(sidecar)
    (response,) = processor.dispatch(request_headers(headers, metadata=decide_fields(model="gpt-4o")))
    return dynamic_metadata(response, META_DECISION)


def canary_sidecar(share: float = 0.5, seed: int = 20260101, **health: Any) -> Sidecar:
    sidecar = make_sidecar(make_policy(health={"canary_share": share, **health}))
    sidecar.rng = random.Random(seed)
    return sidecar


def test_the_canary_share_never_applies_to_revenue_critical_traffic() -> None:
    sidecar = canary_sidecar()
    decisions = [decide(sidecar, Impact.REVENUE_CRITICAL) for _ in range(200)]
    assert {(d["rungs"], d["canary"]) for d in decisions} == {("0,1,2", False)}


@pytest.mark.parametrize("impact", [Impact.CUSTOMER_FACING, Impact.ASYNC_ACCEPTABLE, Impact.DEFERRABLE])
def test_about_the_canary_share_of_other_traffic_starts_on_the_fallback_rungs(impact: Impact) -> None:
    sidecar = canary_sidecar(share=0.25)
    decisions = [decide(sidecar, impact) for _ in range(400)]
    canaries = [d for d in decisions if d["canary"]]
    assert 60 <= len(canaries) <= 140
    assert {(d["rungs"], d["cluster"], d["skip"], d["tries"]) for d in canaries} == {("1,2", "rw.main.6", "", 4.0)}
    assert {d["rungs"] for d in decisions if not d["canary"]} == {"0,1,2"}


def test_no_canary_with_health_disabled() -> None:
    sidecar = canary_sidecar(enabled=False)
    assert not any(decide(sidecar, Impact.DEFERRABLE)["canary"] for _ in range(50))


def test_no_canary_when_the_first_rung_was_already_skipped() -> None:
    sidecar = canary_sidecar(share=0.5, circuit={"consecutive_failures": 3})
    break_endpoint(sidecar, KEY)
    decisions = [decide(sidecar, Impact.DEFERRABLE) for _ in range(50)]
    assert {(d["rungs"], d["canary"], d["skip"]) for d in decisions} == {("1,2", False, "server_error")}


class AlwaysCanary(random.Random):
    def random(self) -> float:
        return 0.0


def test_the_canary_does_not_divert_a_request_admitted_as_a_half_open_probe() -> None:
    # The admission is a probe slot of the first rung's circuit: sent elsewhere, nobody answers
    # it, the slot stays taken and after probe_bound_s the circuit re-opens ("probe unanswered").
    clock = FakeClock()
    circuit = {"consecutive_failures": 3, "open_s": 30, "live_half_open": True, "half_open_probes": 1}
    sidecar = make_sidecar(make_policy(health={"canary_share": 0.5, "circuit": circuit}), clock)
    sidecar.rng = AlwaysCanary()
    break_endpoint(sidecar, KEY)
    clock.advance(30)
    meta = decide(sidecar, Impact.CUSTOMER_FACING)
    assert (meta["rungs"], meta["canary"]) == ("0,1,2", False)


def test_once_the_retry_budget_is_spent_a_request_gets_a_single_try() -> None:
    sidecar = make_sidecar(make_policy(health={"retry_budget_floor": 2, "retry_budget_ratio": 0}))
    assert decide(sidecar, Impact.CUSTOMER_FACING)["tries"] == 6
    for _ in range(2):
        sidecar.apply([Observation(KEY, sidecar.clock.wall(), None, attempt=2)])
    assert decide(sidecar, Impact.REVENUE_CRITICAL)["tries"] == 1


def test_one_slow_answer_among_few_is_not_the_p95() -> None:
    # A healthy lognormal endpoint's 1-in-1000 tail, in a window of a dozen answers, must not
    # drive its score to 0 (it did: the nearest-rank p95 of under twenty answers is their max).
    b = board(baseline=1.0)
    ok(b, T0, 1, latency=6.0)
    ok(b, T0, 11, latency=0.7)
    assert score(b, LATER).latency == 1.0
