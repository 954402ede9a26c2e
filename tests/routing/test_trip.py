"""Trips and hops: what a failed try means for the request, and what the next try can infer."""

from __future__ import annotations

import pytest

from extproc.core import CLIENT_STATUS, HOP_RULE, Failure, Hop, TripRecord
from extproc.policy import Policy
from extproc.routing.trip import Action, Position, after_failure, parse_retry_after, previous_failure
from tests.builders import make_policy

F = Failure
HOP, WAIT, FINAL = Action.HOP, Action.WAIT, Action.FINAL


def trip_policy(**overrides: object) -> Policy:
    # Windows: primary 8000, secondary 200000, small 4000 tokens.
    return make_policy(
        ladders={
            "t": [
                {"provider": "primary", "attempts": 2},
                {"provider": "secondary"},
                {"provider": "small", "strip_tools": True},
            ]
        },
        models=[{"match": "*", "ladder": "t"}],
        **overrides,
    )


POSITIONS = {
    # name: where the try stands (ladder t, order 0,1,2: slots 0 0 1 2)
    "rung0-slot0": Position("t", rung=0, slot=0, order=(0, 1, 2), attempt=1, tries=4),
    "rung0-slot1": Position("t", rung=0, slot=1, order=(0, 1, 2), attempt=2, tries=4),
    "rung1": Position("t", rung=1, slot=0, order=(0, 1, 2), attempt=3, tries=4),
    "rung2-last": Position("t", rung=2, slot=0, order=(0, 1, 2), attempt=4, tries=4),
    "out-of-tries": Position("t", rung=0, slot=1, order=(0, 1, 2), attempt=2, tries=2),
}
_NEXT = (HOP, HOP, HOP, FINAL, FINAL)
_PROPAGATE = (FINAL, FINAL, FINAL, FINAL, FINAL)
EXPECTED: dict[Failure, tuple[Action, ...]] = {
    F.TIMEOUT: _NEXT,
    F.RATE_LIMITED: _NEXT,  # without Retry-After
    F.SERVER_ERROR: _NEXT,
    F.CONNECT_ERROR: _NEXT,
    # A larger window lies ahead from rung 0 (secondary), not from rung 1 (only small is left).
    F.CONTEXT_OVERFLOW: (HOP, HOP, FINAL, FINAL, FINAL),
    F.SAFETY_BLOCK: _PROPAGATE,
    F.SCHEMA_ERROR: _NEXT,
    F.QUALITY_REGRESSION: _NEXT,
    F.TOOL_MISMATCH: _NEXT,
    F.BUDGET_EXCEEDED: _NEXT,
    F.ACCESS_DENIED: _NEXT,
    F.CLIENT_ERROR: _PROPAGATE,
    F.STREAM_INTERRUPTED: _PROPAGATE,
}


def test_the_table_covers_every_failure_class() -> None:
    assert set(EXPECTED) == set(Failure) == set(HOP_RULE) == set(CLIENT_STATUS)


@pytest.mark.parametrize("failure", list(Failure))
@pytest.mark.parametrize("where", list(POSITIONS))
def test_after_failure_for_every_class_and_position(failure: Failure, where: str) -> None:
    expected = EXPECTED[failure][list(POSITIONS).index(where)]
    assert after_failure(trip_policy(), POSITIONS[where], failure, None) is expected


@pytest.mark.parametrize(
    ("where", "expected"),
    [("rung0-slot0", HOP), ("rung0-slot1", HOP), ("rung1", HOP), ("rung2-last", FINAL), ("out-of-tries", FINAL)],
)
def test_safety_block_hops_only_when_the_policy_opts_in(where: str, expected: Action) -> None:
    policy = trip_policy(hop_on_safety_block=True)
    assert after_failure(policy, POSITIONS[where], F.SAFETY_BLOCK, None) is expected


@pytest.mark.parametrize(
    ("where", "retry_after", "expected"),
    [
        # Short Retry-After and the next slot is the same rung: keep the 429, Envoy waits it out.
        ("rung0-slot0", 0.0, WAIT),
        ("rung0-slot0", 2.0, WAIT),
        # Longer than retry_after_max_s: flip to 503 and go on at once.
        ("rung0-slot0", 2.5, HOP),
        # The next slot is another rung: nothing to wait for.
        ("rung0-slot1", 1.0, HOP),
        ("rung1", 1.0, HOP),
        # Nothing left: the 429 is the client's answer.
        ("rung2-last", 1.0, FINAL),
        ("out-of-tries", 1.0, FINAL),
    ],
)
def test_rate_limited_waits_only_for_a_short_retry_after_on_the_same_rung(
    where: str, retry_after: float, expected: Action
) -> None:
    assert after_failure(trip_policy(), POSITIONS[where], F.RATE_LIMITED, retry_after) is expected


def test_a_retry_after_on_another_class_is_ignored() -> None:
    assert after_failure(trip_policy(), POSITIONS["rung0-slot0"], F.SERVER_ERROR, 1.0) is HOP


def test_larger_window_is_looked_for_only_among_the_rungs_this_request_may_use() -> None:
    # Order 0,2 leaves out the large secondary rung: nothing larger lies ahead of rung 0.
    position = Position("t", rung=0, slot=1, order=(0, 2), attempt=2, tries=3)
    assert after_failure(trip_policy(), position, F.CONTEXT_OVERFLOW, None) is FINAL
    assert after_failure(trip_policy(), position, F.SERVER_ERROR, None) is HOP


def test_equal_window_later_is_not_larger() -> None:
    policy = make_policy(
        ladders={"t": [{"provider": "primary"}, {"provider": "primary", "model": "other"}]},
        models=[{"match": "*", "ladder": "t"}],
    )
    position = Position("t", rung=0, slot=0, order=(0, 1), attempt=1, tries=2)
    assert after_failure(policy, position, F.CONTEXT_OVERFLOW, None) is FINAL


def test_last_rung_with_a_slot_left_is_not_last() -> None:
    policy = trip_policy()
    only_rung0 = Position("t", rung=0, slot=0, order=(0,), attempt=1, tries=2)
    assert not only_rung0.is_last(policy)
    assert only_rung0.next_is_same_rung(policy)
    assert after_failure(policy, only_rung0, F.RATE_LIMITED, 1.0) is WAIT
    second = Position("t", rung=0, slot=1, order=(0,), attempt=2, tries=2)
    assert second.is_last(policy)
    assert not second.next_is_same_rung(policy)


def test_tries_cap_makes_a_try_last_before_the_ladder_ends() -> None:
    policy = trip_policy()
    position = Position("t", rung=0, slot=0, order=(0, 1, 2), attempt=1, tries=1)
    assert position.is_last(policy)
    assert not position.next_is_same_rung(policy)


def test_later_rungs_of_a_rung_outside_the_order_are_none() -> None:
    # Envoy's own ejection may land a try on a rung decide did not choose.
    assert Position("t", rung=1, slot=0, order=(0, 2), attempt=1, tries=2).later_rungs() == ()
    assert Position("t", rung=0, slot=0, order=(0, 1, 2), attempt=1, tries=3).later_rungs() == (1, 2)


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


def test_hop_rules_follow_the_design() -> None:
    assert HOP_RULE[F.CONTEXT_OVERFLOW] is Hop.LARGER_CONTEXT
    assert {f for f, hop in HOP_RULE.items() if hop is Hop.PROPAGATE} == {
        F.SAFETY_BLOCK,
        F.CLIENT_ERROR,
        F.STREAM_INTERRUPTED,
    }


def test_client_status_is_an_http_error_status_for_every_class() -> None:
    assert all(400 <= status < 600 for status in CLIENT_STATUS.values())
    assert CLIENT_STATUS[F.TIMEOUT] == 504
    assert CLIENT_STATUS[F.RATE_LIMITED] == 429
