"""The per-rung circuit breaker: every rule on its own, then a stateful test against a reference model."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from extproc.health.circuit import (
    TRANSITIONS,
    WINDOW_CAP,
    Circuit,
    CircuitConfig,
    CircuitState,
    IllegalTransition,
    Outcome,
    Transition,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
OK, FAIL, SLOW, IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.SLOW, Outcome.IGNORED

T0 = 1000.0
# Rate rules only, unless a test asks for the consecutive rule.
RATE = CircuitConfig(
    failure_rate_threshold=50.0,
    window_s=60.0,
    minimum_calls=4,
    consecutive_failures=100,
    open_s=30.0,
    half_open_probes=2,
    half_open_successes=2,
    probe_bound_s=10.0,
)


def feed(circuit: Circuit, now: float, *outcomes: Outcome) -> list[Transition]:
    moved: list[Transition] = []
    for outcome in outcomes:
        moved += circuit.record(now, outcome)
    return moved


def opened(config: CircuitConfig = RATE, at: float = T0) -> Circuit:
    circuit = Circuit(config)
    circuit.force_open(at, "test")
    return circuit


def half_open(config: CircuitConfig = RATE, at: float = T0) -> Circuit:
    """A circuit that went HALF_OPEN at `at` (opened open_s earlier), transitions drained."""
    circuit = opened(config, at - config.open_s)
    assert circuit.state(at) is HALF_OPEN
    circuit.tick(at)
    return circuit


def in_state(state: CircuitState) -> Circuit:
    return {CLOSED: Circuit(RATE), OPEN: opened(), HALF_OPEN: half_open()}[state]


def closed_snapshot(**changes: Any) -> dict[str, Any]:
    return {
        "state": "closed",
        "failure_rate": None,
        "calls": 0,
        "failures": 0,
        "consecutive_failures": 0,
        "open_until": None,
        "half_open_admitted": 0,
        "half_open_successes": 0,
        "last_transition": None,
    } | changes


def moves(transitions: list[Transition]) -> list[tuple[float, str, str, str]]:
    return [(t.at, t.source.value, t.target.value, t.reason) for t in transitions]


# ---- the table ---------------------------------------------------------------------------------


def test_the_transition_table_is_closed_open_half_open_closed() -> None:
    assert {(s.value, t.value) for s, t in TRANSITIONS} == {
        ("closed", "open"),
        ("open", "half_open"),
        ("open", "closed"),  # the hold ends with the probes already passing
        ("half_open", "closed"),
        ("half_open", "open"),
    }


ILLEGAL = [(s, t) for s in CircuitState for t in CircuitState if (s, t) not in TRANSITIONS]


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=[f"{s}-{t}" for s, t in ILLEGAL])
def test_a_move_missing_from_the_table_raises_and_changes_nothing(source: CircuitState, target: CircuitState) -> None:
    circuit = in_state(source)
    before = circuit.snapshot(T0)
    with pytest.raises(IllegalTransition, match=f"cannot go from {source} to {target} \\(reason: wrong\\)"):
        circuit._move(T0, target, "wrong")
    assert circuit.snapshot(T0) == before


# ---- CLOSED: what opens it ---------------------------------------------------------------------


def test_a_new_circuit_is_closed_and_lets_traffic_through() -> None:
    circuit = Circuit(RATE)
    assert circuit.state(T0) is CLOSED
    assert circuit.allow(T0)
    assert circuit.snapshot(T0) == closed_snapshot()
    assert repr(circuit) == "<Circuit closed: 0/0 failed in window, 0/100 consecutive>"


def test_the_failure_rate_opens_only_once_minimum_calls_are_in_the_window() -> None:
    circuit = Circuit(RATE)
    assert feed(circuit, T0, FAIL, OK, FAIL) == []  # 67 %, but 3 calls < 4
    assert circuit.snapshot(T0) == closed_snapshot(calls=3, failures=2, consecutive_failures=1)
    assert moves(circuit.record(T0 + 1, OK)) == [(T0 + 1, "closed", "open", "failure rate 50% >= 50% over 4 calls")]
    assert not circuit.allow(T0 + 1)


def test_a_failure_rate_below_the_threshold_keeps_it_closed() -> None:
    circuit = Circuit(RATE)
    assert feed(circuit, T0, FAIL, OK, OK, OK, FAIL, OK) == []
    assert circuit.snapshot(T0) == closed_snapshot(failure_rate=100 * 2 / 6, calls=6, failures=2)


def test_the_rate_is_checked_after_every_counted_call_even_a_success() -> None:
    circuit = Circuit(RATE)
    feed(circuit, T0, OK, OK)
    feed(circuit, T0 + 30, FAIL, FAIL)  # 2 of 4: would open, so make it 2 of 5 first
    assert circuit.state(T0 + 30) is OPEN
    circuit = Circuit(RATE)
    feed(circuit, T0, OK, OK, OK)
    feed(circuit, T0 + 30, FAIL, FAIL)  # 2 of 5: 40 %
    # The three old successes leave the window; a new success makes it 2 of 3, below minimum_calls,
    # and one more makes it 2 of 4: the rate opens the circuit on a success.
    assert feed(circuit, T0 + 60, OK) == []
    assert moves(circuit.record(T0 + 61, OK)) == [(T0 + 61, "closed", "open", "failure rate 50% >= 50% over 4 calls")]


def test_consecutive_failures_open_it_before_minimum_calls() -> None:
    circuit = Circuit(replace(RATE, minimum_calls=50, consecutive_failures=3))
    assert feed(circuit, T0, FAIL, FAIL) == []
    assert moves(circuit.record(T0, FAIL)) == [(T0, "closed", "open", "3 consecutive failures")]


def test_a_success_ends_a_run_of_consecutive_failures() -> None:
    circuit = Circuit(replace(RATE, minimum_calls=50, consecutive_failures=3))
    assert feed(circuit, T0, FAIL, FAIL, OK, FAIL, FAIL) == []
    assert circuit.snapshot(T0)["consecutive_failures"] == 2


def test_slow_calls_count_as_failures_for_the_rate() -> None:
    circuit = Circuit(RATE)
    assert feed(circuit, T0, SLOW, OK, SLOW) == []
    assert circuit.snapshot(T0) == closed_snapshot(calls=3, failures=2)
    assert moves(circuit.record(T0, OK)) == [(T0, "closed", "open", "failure rate 50% >= 50% over 4 calls")]


def test_slow_calls_neither_extend_nor_end_a_run_of_consecutive_failures() -> None:
    circuit = Circuit(replace(RATE, minimum_calls=50, consecutive_failures=3))
    assert feed(circuit, T0, SLOW, SLOW, SLOW, FAIL, SLOW, FAIL, SLOW) == []
    assert circuit.snapshot(T0)["consecutive_failures"] == 2
    assert moves(circuit.record(T0, FAIL)) == [(T0, "closed", "open", "3 consecutive failures")]


def test_ignored_outcomes_change_nothing() -> None:
    circuit = Circuit(replace(RATE, consecutive_failures=2))
    feed(circuit, T0, OK, FAIL)
    before = circuit.snapshot(T0)
    assert feed(circuit, T0, *[IGNORED] * 50) == []
    assert circuit.snapshot(T0) == before == closed_snapshot(calls=2, failures=1, consecutive_failures=1)


def test_calls_slide_out_of_the_window_once_window_s_old() -> None:
    circuit = Circuit(RATE)
    feed(circuit, T0, FAIL, FAIL, FAIL)
    feed(circuit, T0 + 10, OK)  # 3 of 4 would open; 4 < minimum until then
    circuit = Circuit(replace(RATE, minimum_calls=5))
    feed(circuit, T0, FAIL, FAIL, FAIL)
    feed(circuit, T0 + 10, OK)
    assert circuit.snapshot(T0 + 59.5) == closed_snapshot(calls=4, failures=3, consecutive_failures=0)
    # A call exactly window_s old is out.
    assert circuit.snapshot(T0 + 60) == closed_snapshot(calls=1, failures=0, consecutive_failures=0)
    assert circuit.snapshot(T0 + 70) == closed_snapshot()


def test_the_consecutive_run_is_not_bounded_by_the_window() -> None:
    circuit = Circuit(replace(RATE, minimum_calls=50, consecutive_failures=3))
    circuit.record(T0, FAIL)
    circuit.record(T0 + 100, FAIL)
    assert moves(circuit.record(T0 + 200, FAIL)) == [(T0 + 200, "closed", "open", "3 consecutive failures")]


def test_the_window_holds_at_most_window_cap_calls_dropping_the_oldest() -> None:
    circuit = Circuit(RATE)
    circuit.record(T0, FAIL)
    feed(circuit, T0, *[OK] * WINDOW_CAP)
    assert circuit.snapshot(T0) == closed_snapshot(failure_rate=0.0, calls=WINDOW_CAP)


# ---- OPEN: the hysteresis ----------------------------------------------------------------------


def test_an_open_circuit_sends_no_traffic_for_open_s() -> None:
    circuit = Circuit(replace(RATE, consecutive_failures=1))
    circuit.record(T0, FAIL)
    assert circuit.snapshot(T0) == closed_snapshot(
        state="open",
        open_until=T0 + 30,
        last_transition={"at": T0, "source": "closed", "target": "open", "reason": "1 consecutive failures"},
    )
    assert repr(circuit) == "<Circuit open until 1030.0 (1 consecutive failures)>"
    assert not any(circuit.allow(T0 + dt) for dt in (0, 1, 15, 29.999))
    assert circuit.state(T0 + 29.999) is OPEN
    assert circuit.tick(T0 + 29.999) == []
    assert circuit.allow(T0 + 30)
    assert moves(circuit.tick(T0 + 30)) == [(T0 + 30, "open", "half_open", "open for 30s")]


def test_the_move_to_half_open_is_stamped_when_it_fell_due_not_when_noticed() -> None:
    circuit = opened()
    assert circuit.state(T0 + 500) is HALF_OPEN
    assert moves(circuit.tick(T0 + 500)) == [(T0 + 30, "open", "half_open", "open for 30s")]
    assert circuit.tick(T0 + 500) == []


def test_queries_do_not_change_the_circuit() -> None:
    circuit = opened()
    before = repr(circuit)
    assert circuit.state(T0 + 500) is HALF_OPEN
    assert circuit.would_admit(T0 + 500)
    assert circuit.snapshot(T0 + 500)["state"] == "half_open"
    assert repr(circuit) == before  # still open until a command applies the timer
    assert moves(circuit.tick(T0 + 500)) == [(T0 + 30, "open", "half_open", "open for 30s")]


def test_live_results_while_open_are_dropped() -> None:
    circuit = opened()
    before = circuit.snapshot(T0 + 1)
    assert feed(circuit, T0 + 1, OK, OK, OK, FAIL, SLOW, IGNORED) == []
    assert circuit.snapshot(T0 + 1) == before


def test_opening_frees_the_window_so_an_open_circuit_shows_its_reason_instead() -> None:
    circuit = Circuit(RATE)
    feed(circuit, T0, FAIL, FAIL, OK, OK)
    assert circuit.snapshot(T0) == closed_snapshot(
        state="open",
        open_until=T0 + 30,
        last_transition={
            "at": T0,
            "source": "closed",
            "target": "open",
            "reason": "failure rate 50% >= 50% over 4 calls",
        },
    )


# ---- probes while not closed: finding out is not letting traffic back ----------------------------


def probe(circuit: Circuit, now: float, *outcomes: Outcome) -> list[Transition]:
    moved: list[Transition] = []
    for outcome in outcomes:
        moved += circuit.record(now, outcome, probe=True)
    return moved


def test_probe_results_count_while_open_but_live_traffic_waits_out_the_hold() -> None:
    circuit = opened()  # open until T0 + 30
    assert probe(circuit, T0 + 5, OK, OK) == []  # passes, but the hold is for live traffic
    assert circuit.snapshot(T0 + 5)["half_open_successes"] == 2
    assert circuit.state(T0 + 29.9) is OPEN and not circuit.allow(T0 + 29.9)
    assert moves(circuit.tick(T0 + 30)) == [(T0 + 30, "open", "closed", "open for 30s, 2 probe successes")]
    assert circuit.allow(T0 + 30)


def test_a_failing_probe_keeps_it_open_without_prolonging_the_hold() -> None:
    circuit = opened()
    for at in range(5, 30, 5):
        assert probe(circuit, T0 + at, FAIL, SLOW) == []
    assert circuit.snapshot(T0 + 29)["open_until"] == T0 + 30
    assert moves(circuit.tick(T0 + 30)) == [(T0 + 30, "open", "half_open", "open for 30s")]


def test_a_failing_probe_breaks_the_run_of_passes() -> None:
    circuit = opened()
    probe(circuit, T0 + 5, OK, FAIL, OK)
    assert circuit.snapshot(T0 + 5)["half_open_successes"] == 1
    assert moves(circuit.tick(T0 + 30)) == [(T0 + 30, "open", "half_open", "open for 30s")]
    assert circuit.snapshot(T0 + 30)["half_open_successes"] == 1  # the run goes on in half-open
    assert moves(probe(circuit, T0 + 31, OK)) == [(T0 + 31, "half_open", "closed", "2 probe successes")]


def test_a_failing_probe_in_half_open_ends_the_run_but_does_not_reopen() -> None:
    circuit = half_open()
    assert probe(circuit, T0 + 1, OK, FAIL) == []
    assert circuit.state(T0 + 1) is HALF_OPEN
    assert circuit.snapshot(T0 + 1)["half_open_successes"] == 0
    assert moves(probe(circuit, T0 + 5, OK, OK)) == [(T0 + 5, "half_open", "closed", "2 probe successes")]


def test_ignored_probe_results_neither_extend_nor_break_the_run() -> None:
    circuit = opened()
    probe(circuit, T0 + 1, OK, IGNORED, IGNORED)
    assert circuit.snapshot(T0 + 1)["half_open_successes"] == 1


def test_probes_are_never_admitted_so_their_results_free_no_live_admission() -> None:
    circuit = half_open(replace(RATE, half_open_successes=3))
    assert circuit.allow(T0)
    probe(circuit, T0 + 1, OK)
    assert circuit.snapshot(T0 + 1)["half_open_admitted"] == 1
    # The live call hangs: its bound re-opens the circuit, whatever the probes said.
    assert moves(circuit.tick(T0 + 10)) == [(T0 + 10, "half_open", "open", "probe unanswered for 10s")]


def test_a_flapping_rung_whose_probes_pass_gets_live_traffic_back_only_after_its_longer_hold() -> None:
    circuit = half_open()
    until = flap(circuit, T0)  # re-opened within a window of closing: held 60 s
    probe(circuit, T0 + 5, OK, OK)
    assert circuit.state(until - 0.1) is OPEN
    assert moves(circuit.tick(until)) == [(until, "open", "closed", "open for 60s, 2 probe successes")]


# ---- HALF_OPEN: admitted live calls -----------------------------------------------------------


def test_half_open_admits_at_most_half_open_probes_at_once() -> None:
    circuit = half_open()
    assert [circuit.allow(T0) for _ in range(4)] == [True, True, False, False]
    assert circuit.snapshot(T0) == closed_snapshot(
        state="half_open",
        half_open_admitted=2,
        last_transition={"at": T0, "source": "open", "target": "half_open", "reason": "open for 30s"},
    )
    assert repr(circuit) == "<Circuit half_open: 2/2 probes out, 0/2 successes (open for 30s)>"


def test_a_result_frees_one_probe_slot() -> None:
    circuit = half_open()
    circuit.allow(T0)
    circuit.allow(T0)
    assert circuit.record(T0 + 1, OK) == []
    assert circuit.snapshot(T0 + 1)["half_open_admitted"] == 1
    assert circuit.allow(T0 + 1)
    assert not circuit.allow(T0 + 1)


def test_enough_probe_successes_close_the_circuit_with_a_fresh_window() -> None:
    circuit = half_open()
    circuit.allow(T0)
    circuit.allow(T0)
    assert circuit.record(T0 + 1, OK) == []
    assert moves(circuit.record(T0 + 2, OK)) == [(T0 + 2, "half_open", "closed", "2 probe successes")]
    assert circuit.snapshot(T0 + 2) == closed_snapshot(
        last_transition={"at": T0 + 2, "source": "half_open", "target": "closed", "reason": "2 probe successes"}
    )
    assert circuit.allow(T0 + 2)


def flap(circuit: Circuit, at: float) -> float:
    """Probe the (half-open) circuit closed at `at`, then fail it again at once; returns open_until."""
    feed(circuit, at, OK, OK)
    assert circuit.state(at) is CLOSED
    feed(circuit, at + 1, FAIL, FAIL, FAIL, FAIL)
    assert circuit.state(at + 1) is OPEN
    open_until = circuit.snapshot(at + 1)["open_until"]
    assert isinstance(open_until, float)
    return open_until


def test_a_rung_that_fails_again_soon_after_closing_stays_open_twice_as_long_each_time() -> None:
    circuit = half_open()
    at, open_for = T0, []
    for _ in range(5):
        until = flap(circuit, at)
        open_for.append(until - (at + 1))
        at = until
        assert circuit.state(at) is HALF_OPEN
    assert open_for == [60, 120, 240, 240, 240]  # capped at FLAP_BACKOFF_CAP x open_s
    assert circuit.snapshot(at)["last_transition"]["reason"] == "open for 240s"


def test_a_close_that_lasts_a_window_resets_the_flap_backoff() -> None:
    circuit = half_open()
    until = flap(circuit, T0)
    assert until - (T0 + 1) == 60
    feed(circuit, until, OK, OK)  # closed again, and calm for a whole window
    later = until + RATE.window_s
    feed(circuit, later, FAIL, FAIL, FAIL, FAIL)
    assert circuit.snapshot(later)["open_until"] == later + 30


def test_a_failed_live_call_of_a_flapping_rung_keeps_its_longer_open_time() -> None:
    circuit = half_open()
    until = flap(circuit, T0)  # open for 60 s
    assert circuit.state(until) is HALF_OPEN
    circuit.record(until + 1, FAIL)
    assert circuit.snapshot(until + 1)["open_until"] == until + 61


def test_a_failed_admitted_live_call_reopens_for_another_open_s() -> None:
    circuit = half_open()
    circuit.allow(T0)
    circuit.record(T0 + 1, OK)
    assert moves(circuit.record(T0 + 2, FAIL)) == [(T0 + 2, "half_open", "open", "probe failed")]
    assert circuit.snapshot(T0 + 2) == closed_snapshot(
        state="open",
        open_until=T0 + 32,
        last_transition={"at": T0 + 2, "source": "half_open", "target": "open", "reason": "probe failed"},
    )
    assert not circuit.allow(T0 + 31.9)


def test_a_slow_admitted_live_call_reopens() -> None:
    circuit = half_open()
    circuit.allow(T0)
    assert moves(circuit.record(T0 + 2, SLOW)) == [(T0 + 2, "half_open", "open", "probe slow")]


def test_an_ignored_probe_result_frees_its_slot_without_counting() -> None:
    circuit = half_open(replace(RATE, half_open_probes=1))
    assert circuit.allow(T0)
    assert not circuit.allow(T0)
    assert circuit.record(T0 + 1, IGNORED) == []
    assert circuit.snapshot(T0 + 1)["half_open_admitted"] == 0
    assert circuit.snapshot(T0 + 1)["half_open_successes"] == 0
    assert circuit.allow(T0 + 1)


def test_a_hung_admitted_call_reopens_after_probe_bound_s() -> None:
    circuit = half_open()
    circuit.allow(T0)
    circuit.allow(T0 + 4)
    assert circuit.state(T0 + 9.999) is HALF_OPEN
    assert not circuit.allow(T0 + 10)  # the first probe's bound: the circuit is open again
    assert moves(circuit.tick(T0 + 10)) == [(T0 + 10, "half_open", "open", "probe unanswered for 10s")]
    assert circuit.snapshot(T0 + 10)["open_until"] == T0 + 40


def test_a_result_that_arrives_after_the_probe_bound_is_too_late() -> None:
    circuit = half_open()
    circuit.allow(T0)
    assert moves(circuit.record(T0 + 10, OK)) == [(T0 + 10, "half_open", "open", "probe unanswered for 10s")]
    assert circuit.snapshot(T0 + 10)["half_open_successes"] == 0


def test_a_result_frees_the_oldest_admission_so_the_hung_probe_timer_fires_late_never_early() -> None:
    circuit = half_open(replace(RATE, half_open_successes=5))
    circuit.allow(T0)  # hangs, we shall see
    circuit.allow(T0 + 5)
    circuit.record(T0 + 6, OK)  # perhaps the second probe's answer; it frees the first admission
    assert circuit.state(T0 + 14.9) is HALF_OPEN
    assert circuit.state(T0 + 15) is OPEN
    assert moves(circuit.tick(T0 + 15)) == [(T0 + 15, "half_open", "open", "probe unanswered for 10s")]


def test_results_from_calls_this_circuit_did_not_admit_count_like_probe_results() -> None:
    circuit = half_open()
    assert circuit.record(T0 + 1, OK) == []  # another sidecar's probe, via the health bus
    assert circuit.snapshot(T0 + 1)["half_open_admitted"] == 0
    assert moves(circuit.record(T0 + 2, OK)) == [(T0 + 2, "half_open", "closed", "2 probe successes")]
    circuit = half_open()
    assert moves(circuit.record(T0 + 1, FAIL)) == [(T0 + 1, "half_open", "open", "probe failed")]


def test_half_open_with_no_probes_waits_without_a_timer() -> None:
    circuit = half_open()
    assert circuit.state(T0 + 10_000) is HALF_OPEN
    assert circuit.tick(T0 + 10_000) == []


def test_one_record_can_catch_up_on_several_due_timers() -> None:
    circuit = half_open()
    circuit.allow(T0)
    # Probe hung at T0 + 10, open until T0 + 40, then half-open again: this success is a probe result.
    got = circuit.record(T0 + 50, OK)
    assert moves(got) == [
        (T0 + 10, "half_open", "open", "probe unanswered for 10s"),
        (T0 + 40, "open", "half_open", "open for 30s"),
    ]
    assert circuit.snapshot(T0 + 50)["half_open_successes"] == 1
    assert circuit.tick(T0 + 50) == []  # record() returned its own


# ---- force_open --------------------------------------------------------------------------------


def test_force_open_opens_a_closed_circuit_with_the_given_reason() -> None:
    circuit = Circuit(RATE)
    circuit.record(T0, OK)
    assert moves(circuit.force_open(T0 + 1, "quota exhausted")) == [(T0 + 1, "closed", "open", "quota exhausted")]
    assert circuit.snapshot(T0 + 1)["open_until"] == T0 + 31


def test_force_open_opens_a_half_open_circuit() -> None:
    circuit = half_open()
    circuit.allow(T0)
    assert moves(circuit.force_open(T0 + 1, "quota exhausted")) == [(T0 + 1, "half_open", "open", "quota exhausted")]
    assert circuit.snapshot(T0 + 1)["half_open_admitted"] == 0


def test_force_open_on_an_open_circuit_is_a_no_op_that_keeps_open_until() -> None:
    circuit = opened()
    assert circuit.force_open(T0 + 20, "quota exhausted") == []
    assert circuit.snapshot(T0 + 20)["open_until"] == T0 + 30


def test_force_open_returns_the_timer_transitions_it_caught_up_on() -> None:
    circuit = opened()
    assert moves(circuit.force_open(T0 + 45, "quota exhausted")) == [
        (T0 + 30, "open", "half_open", "open for 30s"),
        (T0 + 45, "half_open", "open", "quota exhausted"),
    ]


# ---- time --------------------------------------------------------------------------------------


def test_a_now_earlier_than_one_already_seen_counts_as_the_latest_seen() -> None:
    circuit = opened()
    assert circuit.tick(T0 + 30) != []  # a command: the circuit has now seen T0 + 30
    assert circuit.state(T0) is HALF_OPEN
    assert circuit.allow(T0 - 100)
    assert circuit.snapshot(T0 + 30)["half_open_admitted"] == 1
    assert circuit.state(T0 + 39.9) is HALF_OPEN
    assert circuit.state(T0 + 40) is OPEN  # the admission was stamped T0 + 30


# ---- configuration -----------------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones() -> None:
    assert CircuitConfig() == CircuitConfig(
        failure_rate_threshold=50.0,
        window_s=60.0,
        minimum_calls=5,
        consecutive_failures=5,
        open_s=30.0,
        half_open_probes=2,
        half_open_successes=2,
        probe_bound_s=30.0,
    )
    assert Circuit(CircuitConfig()).config == CircuitConfig()


BAD_CONFIGS: list[tuple[str, object, str]] = [
    ("failure_rate_threshold", 140, "failure_rate_threshold must be in (0, 100], but was 140"),
    ("failure_rate_threshold", 0, "failure_rate_threshold must be in (0, 100], but was 0"),
    ("failure_rate_threshold", float("nan"), "failure_rate_threshold must be in (0, 100], but was nan"),
    ("failure_rate_threshold", "50", "failure_rate_threshold must be in (0, 100], but was '50'"),
    ("window_s", 0, "window_s must be a finite number > 0, but was 0"),
    ("window_s", -1.5, "window_s must be a finite number > 0, but was -1.5"),
    ("window_s", float("inf"), "window_s must be a finite number > 0, but was inf"),
    ("minimum_calls", 0, "minimum_calls must be an integer in [1, 10000], but was 0"),
    ("minimum_calls", 10_001, "minimum_calls must be an integer in [1, 10000], but was 10001"),
    ("minimum_calls", 2.5, "minimum_calls must be an integer in [1, 10000], but was 2.5"),
    ("consecutive_failures", 0, "consecutive_failures must be an integer >= 1, but was 0"),
    ("consecutive_failures", True, "consecutive_failures must be an integer >= 1, but was True"),
    ("open_s", 0.0, "open_s must be a finite number > 0, but was 0.0"),
    ("open_s", float("nan"), "open_s must be a finite number > 0, but was nan"),
    ("half_open_probes", 0, "half_open_probes must be an integer >= 1, but was 0"),
    ("half_open_successes", -2, "half_open_successes must be an integer >= 1, but was -2"),
    ("probe_bound_s", -30, "probe_bound_s must be a finite number > 0, but was -30"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_CONFIGS, ids=[f"{n}={v!r}" for n, v, _ in BAD_CONFIGS])
def test_a_bad_config_value_is_rejected_with_its_value_in_the_message(name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        CircuitConfig(**{name: value})  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_the_boundary_config_values_are_accepted() -> None:
    CircuitConfig(failure_rate_threshold=100, minimum_calls=1, consecutive_failures=1, half_open_probes=1)
    CircuitConfig(failure_rate_threshold=0.001, minimum_calls=WINDOW_CAP, window_s=0.001, open_s=1e-9)


# ---- the reference model -----------------------------------------------------------------------


@dataclass
class Model:
    """The circuit recomputed from the history of what happened since the current state began.

    No running counters, no deque: the window, the rate and the consecutive run are derived from
    the full list of counted outcomes each time they are needed.
    """

    config: CircuitConfig
    state: CircuitState = CLOSED
    open_until: float | None = None
    history: list[tuple[float, Outcome]] = field(default_factory=list)  # counted outcomes since CLOSED began
    admitted: list[float] = field(default_factory=list)  # unanswered admissions since HALF_OPEN began
    # Results that count toward closing, since the circuit last opened: probes' in OPEN and
    # HALF_OPEN, live calls' in HALF_OPEN. Closing needs the last half_open_successes of them
    # to be passes; a failing probe is only a break in the run.
    probe_results: list[Outcome] = field(default_factory=list)
    last: tuple[float, str, str, str] | None = None
    pending: list[tuple[float, str, str, str]] = field(default_factory=list)
    closed_at: float | None = None  # when probes last closed it
    flaps: int = 0  # re-opens within window_s of a close, since the last calm close

    def window(self, now: float) -> list[Outcome]:
        recent = [outcome for t, outcome in self.history if t > now - self.config.window_s]
        return recent[-WINDOW_CAP:]

    def failures(self, now: float) -> int:
        return sum(outcome in (FAIL, SLOW) for outcome in self.window(now))

    def consecutive(self) -> int:
        run = 0
        for _, outcome in reversed(self.history):
            if outcome is OK:
                break
            run += outcome is FAIL
        return run

    def go(self, at: float, target: CircuitState, reason: str) -> tuple[float, str, str, str]:
        assert (self.state, target) in TRANSITIONS
        if target is OPEN and self.state is CLOSED:
            flapping = self.closed_at is not None and at - self.closed_at < self.config.window_s
            self.flaps = min(self.flaps + 1, 3) if flapping else 0  # 2**3 = FLAP_BACKOFF_CAP
        if target is CLOSED:
            self.closed_at = at
        self.last = (at, self.state.value, target.value, reason)
        keep = (self.state, target) == (OPEN, HALF_OPEN)
        self.state = target
        self.history, self.admitted = [], []
        if not keep:
            self.probe_results = []
        self.open_until = at + self.open_for() if target is OPEN else None
        return self.last

    def open_for(self) -> float:
        return self.config.open_s * (1 << self.flaps)

    def passes(self) -> int:
        """Passes at the end of the results that count toward closing."""
        run = 0
        for outcome in reversed(self.probe_results):
            if outcome is not OK:
                break
            run += 1
        return run

    def timers(self, now: float) -> list[tuple[float, str, str, str]]:
        fired = []
        while True:
            if self.state is OPEN and self.open_until is not None and now >= self.open_until:
                held = f"open for {self.open_for():g}s"
                if self.passes() >= self.config.half_open_successes:
                    fired.append(self.go(self.open_until, CLOSED, f"{held}, {self.passes()} probe successes"))
                else:
                    fired.append(self.go(self.open_until, HALF_OPEN, held))
            elif self.state is HALF_OPEN and self.admitted and now >= min(self.admitted) + self.config.probe_bound_s:
                due = min(self.admitted) + self.config.probe_bound_s
                fired.append(self.go(due, OPEN, f"probe unanswered for {self.config.probe_bound_s:g}s"))
            else:
                return fired

    def poll(self, now: float) -> CircuitState:
        self.pending += self.timers(now)
        return self.state

    def allow(self, now: float) -> bool:
        self.poll(now)
        if self.state is CLOSED:
            return True
        if self.state is HALF_OPEN and len(self.admitted) < self.config.half_open_probes:
            self.admitted.append(now)
            return True
        return False

    def record(self, now: float, outcome: Outcome, probe: bool = False) -> list[tuple[float, str, str, str]]:
        moved = self.timers(now)
        config = self.config
        if self.state is CLOSED and outcome is not IGNORED:
            self.history.append((now, outcome))
            calls, failures = len(self.window(now)), self.failures(now)
            if self.consecutive() >= config.consecutive_failures:
                moved.append(self.go(now, OPEN, f"{self.consecutive()} consecutive failures"))
            elif calls >= config.minimum_calls and Fraction(failures, calls) * 100 >= Fraction(
                config.failure_rate_threshold
            ):
                rate = f"{100 * failures / calls:g}% >= {config.failure_rate_threshold:g}%"
                moved.append(self.go(now, OPEN, f"failure rate {rate} over {calls} calls"))
        elif self.state is not CLOSED and probe:
            # Whether it is OPEN or HALF_OPEN, a probe's result only extends or breaks the run.
            if outcome is not IGNORED:
                self.probe_results.append(outcome)
            if self.state is HALF_OPEN and self.passes() >= config.half_open_successes:
                moved.append(self.go(now, CLOSED, f"{self.passes()} probe successes"))
        elif self.state is HALF_OPEN:
            if self.admitted:
                self.admitted.remove(min(self.admitted))
            if outcome in (FAIL, SLOW):
                moved.append(self.go(now, OPEN, "probe failed" if outcome is FAIL else "probe slow"))
            elif outcome is OK:
                self.probe_results.append(outcome)
                if self.passes() >= config.half_open_successes:
                    moved.append(self.go(now, CLOSED, f"{self.passes()} probe successes"))
        return moved

    def force_open(self, now: float, reason: str) -> list[tuple[float, str, str, str]]:
        moved = self.timers(now)
        if self.state is not OPEN:
            moved.append(self.go(now, OPEN, reason))
        return moved

    def snapshot(self, now: float) -> dict[str, Any]:
        self.poll(now)
        calls = len(self.window(now))
        last = None if self.last is None else dict(zip(("at", "source", "target", "reason"), self.last, strict=True))
        return {
            "state": self.state.value,
            "failure_rate": 100 * self.failures(now) / calls if calls >= self.config.minimum_calls else None,
            "calls": calls,
            "failures": self.failures(now),
            "consecutive_failures": self.consecutive(),
            "open_until": self.open_until,
            "half_open_admitted": len(self.admitted),
            "half_open_successes": self.passes(),
            "last_transition": last,
        }


configs = st.builds(
    CircuitConfig,
    # Whole percents and quarter seconds keep the arithmetic exact, so ties at the boundaries
    # (a call exactly window_s old, a timer due exactly now) are hit and agree.
    failure_rate_threshold=st.one_of(st.sampled_from([25.0, 50.0, 100.0]), st.integers(1, 100).map(float)),
    window_s=st.sampled_from([1.0, 2.5, 5.0, 10.0]),
    minimum_calls=st.integers(1, 6),
    consecutive_failures=st.integers(1, 6),
    open_s=st.sampled_from([0.25, 1.0, 2.5, 5.0]),
    half_open_probes=st.integers(1, 3),
    half_open_successes=st.integers(1, 3),
    probe_bound_s=st.sampled_from([0.25, 2.0, 5.0, 20.0]),
)
# Mostly small steps, to land between the timers; now and then a long silence.
steps = st.integers(0, 24).map(lambda q: q / 4 if q <= 20 else 10.0 * (q - 20))


class CircuitAgainstModel(RuleBasedStateMachine):
    circuit: Circuit
    model: Model
    now: float

    @initialize(config=configs, start=st.sampled_from(CircuitState))
    def start(self, config: CircuitConfig, start: CircuitState) -> None:
        # Starting open or half-open spends the steps on probes rather than on getting there.
        self.circuit, self.model, self.now = Circuit(config), Model(config), T0
        if start is not CLOSED:
            self.force_open()
        if start is HALF_OPEN:
            self.advance(config.open_s, "tick")

    # Looking is folded into advancing so that fewer rules leave the interesting sequences likelier.
    @rule(dt=steps, look=st.sampled_from(["no", "state", "snapshot", "tick"]))
    def advance(self, dt: float, look: str = "no") -> None:
        self.now += dt
        # Queries show the circuit as of now without changing it: the model's copy catches up.
        if look == "state":
            assert self.circuit.state(self.now) is copy.deepcopy(self.model).poll(self.now)
        elif look == "snapshot":
            assert self.circuit.snapshot(self.now) == copy.deepcopy(self.model).snapshot(self.now)
        elif look == "tick":
            self.model.poll(self.now)
            assert moves(self.circuit.tick(self.now)) == self.model.pending
            self.model.pending = []

    @rule(outcome=st.sampled_from([OK, OK, OK, FAIL, SLOW, IGNORED]), probe=st.booleans())
    def record(self, outcome: Outcome, probe: bool) -> None:
        got = self.circuit.record(self.now, outcome, probe=probe)
        assert moves(got) == self.model.record(self.now, outcome, probe)

    @rule()
    def allow(self) -> None:
        assert self.circuit.allow(self.now) == self.model.allow(self.now)

    # Requests arriving a moment apart: several admissions at distinct times, which single rules
    # rarely line up before a probe times out.
    @rule(gaps=st.lists(st.integers(1, 4).map(lambda q: q / 4), min_size=2, max_size=4))
    def burst(self, gaps: list[float]) -> None:
        for gap in gaps:
            self.now += gap
            self.allow()

    @rule()
    def force_open(self) -> None:
        assert moves(self.circuit.force_open(self.now, "quota")) == self.model.force_open(self.now, "quota")

    # Invariants read the circuit without a `now`, so they do not fire its timers: the rules
    # above must catch up on them, which is the path under test.
    @invariant()
    def states_agree(self) -> None:
        assert self.circuit._state is self.model.state
        assert self.circuit._state in CircuitState

    @invariant()
    def open_until_only_when_open(self) -> None:
        assert (self.circuit._open_until is not None) == (self.circuit._state is OPEN)
        assert self.circuit._open_until == self.model.open_until

    @invariant()
    def admissions_within_bound_and_only_when_half_open(self) -> None:
        admitted = list(self.circuit._admitted)
        assert len(admitted) <= self.circuit.config.half_open_probes
        assert not admitted or self.circuit._state is HALF_OPEN
        # A result frees the oldest admission, whoever's call it was.
        assert admitted == sorted(self.model.admitted)

    @invariant()
    def the_run_of_passes_agrees(self) -> None:
        assert self.circuit._successes == self.model.passes()
        assert self.circuit._successes == 0 or self.circuit._state is not CLOSED

    @invariant()
    def window_only_when_closed_and_counts_consistent(self) -> None:
        circuit = self.circuit
        assert len(circuit._window) == 0 or circuit._state is CLOSED
        assert circuit._failures == sum(failed for _, failed in circuit._window)
        assert circuit._consecutive < circuit.config.consecutive_failures


CircuitAgainstModel.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
test_circuit_agrees_with_the_reference_model = CircuitAgainstModel.TestCase


@settings(max_examples=200, deadline=None)
@given(
    config=configs,
    events=st.lists(
        st.tuples(steps, st.sampled_from([*Outcome, *(f"probe:{o}" for o in Outcome), "allow", "force_open"])),
        max_size=40,
    ),
    polls=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_polling_state_in_between_changes_no_outcome(
    config: CircuitConfig, events: list[tuple[float, Outcome | str]], polls: list[bool]
) -> None:
    """Timers are stamped when due, so a circuit asked state() often and one never asked agree."""

    def run(poll: list[bool]) -> tuple[list[Any], list[Transition]]:
        circuit, now, answers, every = Circuit(config), T0, [], []
        for (dt, event), asked in zip(events, poll, strict=False):
            now += dt
            if asked:
                circuit.state(now)
                every += circuit.tick(now)
            if event == "allow":
                answers.append(circuit.allow(now))
            elif event == "force_open":
                every += circuit.force_open(now, "quota")
            elif event.startswith("probe:"):
                every += circuit.record(now, Outcome(event.removeprefix("probe:")), probe=True)
            else:
                every += circuit.record(now, Outcome(event))
            every += circuit.tick(now)
        return answers, every

    assert run(polls) == run([False] * len(polls))


@settings(max_examples=200, deadline=None)
@given(
    config=configs,
    before=st.lists(st.sampled_from([OK, FAIL, SLOW, IGNORED]), max_size=6),
    around=st.sampled_from([OK, FAIL, SLOW, IGNORED]),
    after=st.lists(st.sampled_from([OK, FAIL, SLOW, IGNORED]), max_size=6),
)
def test_a_probe_result_means_the_same_on_either_side_of_the_holds_end(
    config: CircuitConfig, before: list[Outcome], around: Outcome, after: list[Outcome]
) -> None:
    """Replicas hear the same probe results at slightly different local times: one that lands
    just before the hold ends in one replica and just after it in another leaves them agreeing.
    (A hold that ends with the probes already passed closes as it ends: what lands after that
    lands in a fresh window, like any observation heard a moment apart; see the next test.)"""
    end = T0 + config.open_s
    passed = Model(config)
    passed.probe_results = [o for o in before if o is not IGNORED]
    assume(passed.passes() < config.half_open_successes)

    def replica(hears_at: float) -> tuple[str, int]:
        circuit = opened(config)
        probe(circuit, T0 + config.open_s / 2, *before)
        probe(circuit, hears_at, around)
        circuit.tick(end + 0.01)
        probe(circuit, end + 0.01, *after)
        snap = circuit.snapshot(end + 0.01)
        return snap["state"], snap["half_open_successes"]

    assert replica(end - 0.01) == replica(end + 0.005)


def test_a_failing_probe_heard_either_side_of_a_hold_ending_in_a_close_parts_replicas_for_one_run() -> None:
    """The one case the previous test leaves out. The replica that heard the failure first
    turns half-open (the run is broken); the other closed with the hold and counts the failure
    in its fresh window. They agree again with the next passing probes, which `rungway up`
    sends because the half-open replica says so (probe.ReplicaReports)."""
    early, late = opened(), opened()
    for circuit in (early, late):
        probe(circuit, T0 + 10, OK, OK)
    probe(early, T0 + 29.99, FAIL)
    late.tick(T0 + 30)
    probe(late, T0 + 30.01, FAIL)
    assert (early.state(T0 + 30.01), late.state(T0 + 30.01)) == (HALF_OPEN, CLOSED)
    for circuit in (early, late):
        probe(circuit, T0 + 35, OK)
        probe(circuit, T0 + 40, OK)
    assert early.state(T0 + 40) is late.state(T0 + 40) is CLOSED
