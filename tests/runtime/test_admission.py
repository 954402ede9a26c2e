"""Admission: what a worker counts as in flight for load shedding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extproc.runtime.admission import RESERVATION_S, Admission


def test_a_routed_request_is_in_flight_until_its_try_starts_and_then_until_the_try_ends() -> None:
    a = Admission(limit=2)
    a.routed(0.0)
    assert a.in_flight(0.0) == 1
    a.try_started(0.01)
    assert a.in_flight(0.01) == 1  # the reservation became the try
    a.try_ended()
    assert a.in_flight(0.02) == 0


def test_full_at_the_limit() -> None:
    a = Admission(limit=2)
    a.routed(0.0)
    assert not a.full(0.0)
    a.routed(0.0)
    assert a.full(0.0)
    assert a.snapshot(0.0) == {"limit": 2, "in_flight": 2, "tries": 0}


def test_a_reservation_whose_try_never_starts_here_lapses() -> None:
    a = Admission(limit=1)
    a.routed(0.0)
    assert a.full(RESERVATION_S - 0.01)
    assert not a.full(RESERVATION_S + 0.01)  # a query: nothing removed yet...
    a.routed(RESERVATION_S + 0.01)  # ...until the next command
    assert a.in_flight(RESERVATION_S + 0.01) == 1


def test_a_try_routed_by_another_worker_still_counts() -> None:
    a = Admission(limit=1)
    a.try_started(0.0)
    assert a.full(0.0)


@given(st.lists(st.tuples(st.sampled_from(["route", "start", "end"]), st.floats(0, 0.5))))
def test_in_flight_is_never_negative_and_reservations_never_outlive_their_lease(
    steps: list[tuple[str, float]],
) -> None:
    a = Admission(limit=10)
    now = 0.0
    for what, dt in steps:
        now += dt
        if what == "route":
            a.routed(now)
        elif what == "start":
            a.try_started(now)
        else:
            a.try_ended()
        assert a.tries >= 0
        assert a.tries <= a.in_flight(now) <= a.tries + sum(1 for s, _ in steps if s == "route")
        assert a.in_flight(now + RESERVATION_S + 0.001) == a.tries
