"""Trips and hops: what a failed try means for the request, and what the next try can infer."""

from __future__ import annotations

import pytest

from extproc.core import CLIENT_STATUS, RETRY_RULE, Failure, TripRecord
from extproc.policy import Policy
from extproc.routing.trip import Action, Position, Step, next_step, parse_retry_after, previous_failure
from tests.builders import make_policy

F = Failure
SAME, WAIT, HOP, FINAL = Action.SAME, Action.WAIT, Action.HOP, Action.FINAL


def trip_policy(**overrides: object) -> Policy:
    # Windows: primary 8000, secondary 200000, small 4000 tokens. Two slots a rung (the default).
    return make_policy(
        ladders={
            "t": [
                {"provider": "primary"},
                {"provider": "secondary"},
                {"provider": "small", "strip_tools": True},
            ]
        },
        models=[{"match": "*", "ladder": "t"}],
        **overrides,
    )


ORDER = (0, 1, 2)  # slots: (0,0) (0,1) (1,0) (1,1) (2,0) (2,1): Envoy's six attempts
POSITIONS = {
    "rung0-slot0": Position("t", rung=0, slot=0, order=ORDER, attempt=1, tries=6),
    "rung0-slot1": Position("t", rung=0, slot=1, order=ORDER, attempt=2, tries=6),
    "rung1-slot0": Position("t", rung=1, slot=0, order=ORDER, attempt=3, tries=6),
    "rung2-slot1": Position("t", rung=2, slot=1, order=ORDER, attempt=6, tries=6),
}


def step(failure: Failure, where: str, retry_after: float | None = None, real_tries: int = 1, **policy: object) -> Step:
    return next_step(trip_policy(**policy), POSITIONS[where], failure, retry_after, real_tries)


# One row per failure class: what happens after a first try on rung 0 (slot 0) fails with it.
TABLE: dict[Failure, Step] = {
    F.TIMEOUT: Step(HOP, 1),  # no first byte in the rung's budget: never re-sent to a silent rung
    F.RATE_LIMITED: Step(HOP, 1),  # no (or a long) Retry-After: a persistent limit
    F.SERVER_ERROR: Step(SAME, 0),  # a single 500/502/503/529: the same rung once
    F.CONNECT_ERROR: Step(SAME, 0),  # a reset or refused connection: the same rung once
    F.CONTEXT_OVERFLOW: Step(HOP, 1),  # only a rung whose window is larger (secondary's 200k)
    F.SAFETY_BLOCK: Step(FINAL),  # propagated
    F.SCHEMA_ERROR: Step(HOP, 1),
    F.QUALITY_REGRESSION: Step(HOP, 1),
    F.TOOL_MISMATCH: Step(HOP, 1),
    F.BUDGET_EXCEEDED: Step(HOP, 1),
    F.ACCESS_DENIED: Step(HOP, 1),  # 401/403: the next rung has its own key
    F.CLIENT_ERROR: Step(FINAL),  # never retried
    F.STREAM_INTERRUPTED: Step(FINAL),  # after the first token nothing is re-sent
    F.UNAUTHENTICATED: Step(FINAL),  # decided before any rung; never a provider's failure
    F.NOT_PERMITTED: Step(FINAL),  # the tenant's policy: decided before any rung
}


def test_the_table_covers_every_failure_class() -> None:
    assert set(TABLE) == set(Failure) == set(RETRY_RULE) == set(CLIENT_STATUS)


@pytest.mark.parametrize("failure", list(Failure))
def test_one_rule_per_failure_class(failure: Failure) -> None:
    assert step(failure, "rung0-slot0") == TABLE[failure]


def test_a_rate_limit_with_a_short_retry_after_waits_on_the_same_rung() -> None:
    assert step(F.RATE_LIMITED, "rung0-slot0", retry_after=0.0) == Step(WAIT, 0)
    assert step(F.RATE_LIMITED, "rung0-slot0", retry_after=2.0) == Step(WAIT, 0)
    assert step(F.RATE_LIMITED, "rung0-slot0", retry_after=2.5) == Step(HOP, 1)  # over retry_after_max_s


def test_the_same_rung_only_once_then_the_next() -> None:
    assert step(F.SERVER_ERROR, "rung0-slot1", real_tries=2) == Step(HOP, 1)
    assert step(F.RATE_LIMITED, "rung0-slot1", retry_after=1.0, real_tries=2) == Step(HOP, 1)  # a second 429


def test_a_retry_after_on_another_class_changes_nothing() -> None:
    assert step(F.TIMEOUT, "rung0-slot0", retry_after=1.0) == Step(HOP, 1)
    assert step(F.SERVER_ERROR, "rung0-slot0", retry_after=1.0) == Step(SAME, 0)


def test_a_context_overflow_goes_only_to_a_larger_window() -> None:
    # From rung 1 (200k) nothing larger is left: small has 4k.
    assert step(F.CONTEXT_OVERFLOW, "rung1-slot0", real_tries=2) == Step(FINAL)


def test_a_rungs_own_context_window_beats_its_providers() -> None:
    policy = make_policy(
        ladders={
            "t": [{"provider": "primary"}, {"provider": "primary", "model": "gpt-long", "context_window": 128_000}]
        },
        models=[{"match": "*", "ladder": "t"}],
    )
    at = Position("t", rung=0, slot=0, order=(0, 1), attempt=1, tries=4)
    assert next_step(policy, at, F.CONTEXT_OVERFLOW, None, 1) == Step(HOP, 1)  # same provider, larger model
    assert policy.context_window_of("t", 1) == 128_000 and policy.context_window_of("t", 0) == 8000


def test_equal_window_later_is_not_larger() -> None:
    policy = make_policy(
        ladders={"t": [{"provider": "primary"}, {"provider": "primary", "model": "other"}]},
        models=[{"match": "*", "ladder": "t"}],
    )
    at = Position("t", rung=0, slot=0, order=(0, 1), attempt=1, tries=4)
    assert next_step(policy, at, F.CONTEXT_OVERFLOW, None, 1) == Step(FINAL)


def test_the_larger_window_is_looked_for_only_among_the_rungs_this_request_may_use() -> None:
    at = Position("t", rung=0, slot=0, order=(0, 2), attempt=1, tries=4)
    assert next_step(trip_policy(), at, F.CONTEXT_OVERFLOW, None, 1) == Step(FINAL)


def test_safety_block_hops_only_when_the_policy_opts_in() -> None:
    assert step(F.SAFETY_BLOCK, "rung0-slot0", hop_on_safety_block=True) == Step(HOP, 1)


def test_nothing_after_the_last_rung_or_past_max_attempts() -> None:
    assert step(F.SERVER_ERROR, "rung2-slot1", real_tries=2) == Step(FINAL)
    assert step(F.TIMEOUT, "rung1-slot0", real_tries=5) == Step(FINAL)  # max_attempts (5) tries reached
    assert step(F.TIMEOUT, "rung1-slot0", real_tries=3, max_attempts=3) == Step(FINAL)
    assert step(F.TIMEOUT, "rung1-slot0", real_tries=3) == Step(HOP, 2)


def test_envoys_attempts_bound_how_far_a_hop_can_reach() -> None:
    # One Envoy attempt left (the retry budget cut tries): rung 1's first slot is two away.
    at = Position("t", rung=0, slot=0, order=ORDER, attempt=1, tries=2)
    assert next_step(trip_policy(), at, F.TIMEOUT, None, 1) == Step(FINAL)
    assert next_step(trip_policy(), at, F.SERVER_ERROR, None, 1) == Step(SAME, 0)


def test_a_one_slot_rung_hops_even_for_a_transient_failure() -> None:
    policy = make_policy(
        ladders={"t": [{"provider": "primary", "attempts": 1}, {"provider": "secondary", "attempts": 1}]},
        models=[{"match": "*", "ladder": "t"}],
    )
    at = Position("t", rung=0, slot=0, order=(0, 1), attempt=1, tries=2)
    assert next_step(policy, at, F.SERVER_ERROR, None, 1) == Step(HOP, 1)


# ---- Retry-After --------------------------------------------------------------------------------

NOW = 1_445_412_470.0  # Wed, 21 Oct 2015 07:27:50 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("2", 2.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "12 seconds", "Wed, 99 Foo 2015", "nan", "inf"])
def test_parse_retry_after_ignores_junk(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# ---- what the next try infers -------------------------------------------------------------------


def test_first_try_has_no_previous_failure() -> None:
    assert previous_failure(None, attempt=1, now_ms=5000.0, per_try_ms=2000.0) is None


def test_missing_record_means_the_previous_try_never_connected() -> None:
    assert previous_failure(None, attempt=2, now_ms=5000.0, per_try_ms=2000.0) is F.CONNECT_ERROR
    stale = TripRecord(attempt=1, rung=0, started_ms=0.0)
    assert previous_failure(stale, attempt=3, now_ms=90_000.0, per_try_ms=2000.0) is F.CONNECT_ERROR


def test_recorded_failure_is_taken_as_is() -> None:
    record = TripRecord(attempt=1, rung=0, started_ms=1000.0, failure=F.QUALITY_REGRESSION)
    assert previous_failure(record, attempt=2, now_ms=9000.0, per_try_ms=2000.0) is F.QUALITY_REGRESSION


@pytest.mark.parametrize(
    ("elapsed_ms", "expected"),
    [(2000.0, F.TIMEOUT), (1900.0, F.TIMEOUT), (5000.0, F.TIMEOUT), (1899.0, F.CONNECT_ERROR), (10.0, F.CONNECT_ERROR)],
)
def test_a_silent_try_that_used_its_per_try_budget_timed_out(elapsed_ms: float, expected: Failure) -> None:
    record = TripRecord(attempt=1, rung=0, started_ms=1000.0)
    assert previous_failure(record, attempt=2, now_ms=1000.0 + elapsed_ms, per_try_ms=2000.0) is expected


def test_without_a_per_try_budget_a_silent_try_is_a_connect_error() -> None:
    record = TripRecord(attempt=1, rung=0, started_ms=0.0)
    assert previous_failure(record, attempt=2, now_ms=1e9, per_try_ms=0.0) is F.CONNECT_ERROR


# ---- the taxonomy tables --------------------------------------------------------------------------


def test_client_status_is_an_http_error_status_for_every_class() -> None:
    assert all(400 <= status < 600 for status in CLIENT_STATUS.values())
    assert CLIENT_STATUS[F.TIMEOUT] == 504
    assert CLIENT_STATUS[F.RATE_LIMITED] == 429
