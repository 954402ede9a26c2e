"""A rung's capacity (T3): impact reservations, tenant shares, reservations that lapse."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core import Impact
from extproc.policy.schema import RungCapacity
from extproc.routing.capacity import (
    DEMAND_S,
    IMPORTANCE,
    RESERVATION_S,
    Denial,
    Holder,
    Ledger,
    Limits,
)

RUNG = ("main", 1)
RC, CF, AA, DF = IMPORTANCE


def limits(n: int, reserved: dict[Impact, int] | None = None, share: float = 1.0) -> Limits:
    return Limits(n, reserved or {}, share)


def admit(ledger: Ledger, lim: Limits, holder: Holder, now: float = 0.0) -> Denial | None:
    """decide's and the try's part: ask, and on yes reserve and start the try."""
    denial = ledger.admits(RUNG, lim, holder, now)
    if denial is None:
        ledger.reserve(RUNG, holder, now)
        ledger.take(RUNG, holder, now)
    else:
        ledger.refused(RUNG, holder.tenant, now)
    return denial


def test_reserved_slots_are_left_to_more_important_impacts() -> None:
    ledger, lim = Ledger(), limits(4, {RC: 1, CF: 1})
    assert [admit(ledger, lim, Holder("a", DF)) for _ in range(3)] == [None, None, Denial.RESERVED]
    assert admit(ledger, lim, Holder("a", CF)) is None  # customer_facing's own reserved slot
    assert admit(ledger, lim, Holder("a", CF)) is Denial.RESERVED  # the last is revenue_critical's
    assert admit(ledger, lim, Holder("a", RC)) is None
    assert admit(ledger, lim, Holder("a", RC)) is Denial.RUNG_FULL


def test_a_tenant_never_holds_more_than_its_cap() -> None:
    ledger, lim = Ledger(), limits(8, share=0.5)
    assert [admit(ledger, lim, Holder("noisy", CF)) for _ in range(5)] == [None] * 4 + [Denial.TENANT_SHARE]
    assert admit(ledger, lim, Holder("quiet", CF)) is None


def test_a_noisy_tenant_is_held_to_its_fair_share_once_another_wants_the_rung() -> None:
    ledger, lim = Ledger(), limits(4)
    for _ in range(4):
        assert admit(ledger, lim, Holder("noisy", CF)) is None  # alone: every idle slot is used
    assert admit(ledger, lim, Holder("quiet", CF)) is Denial.RUNG_FULL  # ...and quiet now wants it
    ledger.free(RUNG, Holder("noisy", CF))
    assert admit(ledger, lim, Holder("noisy", CF), 0.1) is Denial.TENANT_SHARE  # the slot is quiet's
    assert admit(ledger, lim, Holder("quiet", CF), 0.2) is None


def test_demand_lapses_and_idle_slots_go_back_to_the_noisy_tenant() -> None:
    ledger, lim = Ledger(), limits(4)
    for _ in range(2):
        admit(ledger, lim, Holder("noisy", CF))
    ledger.refused(RUNG, "quiet", 0.0)
    # noisy at its share (2 of 4) with quiet wanting: it may take one more, leaving quiet one.
    assert admit(ledger, lim, Holder("noisy", CF), 1.0) is None
    assert admit(ledger, lim, Holder("noisy", CF), 1.0) is Denial.TENANT_SHARE
    assert admit(ledger, lim, Holder("noisy", CF), DEMAND_S + 0.5) is None


def test_a_reservation_not_taken_up_lapses() -> None:
    ledger = Ledger()
    ledger.reserve(RUNG, Holder("a", CF), 0.0)
    assert sum(ledger.held(RUNG, 0.5).values()) == 1
    assert sum(ledger.held(RUNG, RESERVATION_S + 0.1).values()) == 0
    # A try taking up a reservation holds one slot, not two; its end frees it.
    ledger.reserve(RUNG, Holder("a", CF), 2.0)
    ledger.take(RUNG, Holder("a", CF), 2.1)
    assert ledger.snapshot(2.2) == {"main/1": {"a": 1}}
    ledger.free(RUNG, Holder("a", CF))
    ledger.free(RUNG, Holder("a", CF))  # a second end of the same try changes nothing
    assert ledger.snapshot(2.3) == {}


def test_limits_are_the_policys_numbers() -> None:
    capacity = RungCapacity(max_in_flight=9, reserved={RC: 3, CF: 1}, tenant_share=0.5)
    assert Limits.of(capacity) == Limits(9, {RC: 3, CF: 1}, 0.5)
    assert Limits.of(capacity).usable(DF) == 5 and Limits.of(capacity).tenant_cap == 4


def test_reservations_must_fit_the_limit() -> None:
    with pytest.raises(ValueError, match=r"reserved slots \(5\) must fit in max_in_flight \(4\)"):
        RungCapacity(max_in_flight=4, reserved={RC: 5})
    with pytest.raises(ValueError, match="reserved slots must be >= 0"):
        RungCapacity(max_in_flight=4, reserved={RC: -1})


# ---- properties ------------------------------------------------------------------------------------


@st.composite
def rung_limits(draw: st.DrawFn) -> Limits:
    n = draw(st.integers(1, 12))
    reserved: dict[Impact, int] = {}
    left = n
    for impact in IMPORTANCE:
        k = draw(st.integers(0, left))
        reserved[impact] = k
        left -= k
    return limits(n, reserved, draw(st.sampled_from([1.0, 0.75, 0.5, 0.25])))


TENANTS = ["a", "b", "c"]
holders = st.builds(Holder, st.sampled_from(TENANTS), st.sampled_from(list(Impact)))


@settings(max_examples=300)
@given(rung_limits(), st.lists(st.tuples(st.booleans(), holders, st.integers(0, 50)), max_size=120))
def test_reserved_slots_are_never_lent_to_a_lower_impact(lim: Limits, steps: list[tuple[bool, Holder, int]]) -> None:
    ledger, now = Ledger(), 0.0
    held: list[Holder] = []
    for ask, holder, pick in steps:
        now += 0.01
        if ask or not held:
            if admit(ledger, lim, holder, now) is None:
                held.append(holder)
        else:
            ledger.free(RUNG, held.pop(pick % len(held)))
        assert len(held) <= lim.max_in_flight
        for impact in IMPORTANCE:
            at_or_below = IMPORTANCE[IMPORTANCE.index(impact) :]
            assert sum(1 for h in held if h.impact in at_or_below) <= lim.usable(impact)
        for tenant in TENANTS:
            assert sum(1 for h in held if h.tenant == tenant) <= lim.tenant_cap


@settings(max_examples=200)
@given(st.integers(2, 12), st.lists(st.booleans(), min_size=30, max_size=30))
def test_fair_share_converges_once_the_noisy_tenants_requests_end(n: int, order: list[bool]) -> None:
    """noisy held every slot; from then on both always want more. Requests end oldest first;
    after each end, the two ask in the drawn order. Once noisy's first requests have all ended,
    quiet holds its fair share and noisy no more than the rest."""
    ledger, lim, now = Ledger(), limits(n), 0.0
    in_flight: deque[Holder] = deque()
    for _ in range(n):
        assert admit(ledger, lim, Holder("noisy", CF)) is None
        in_flight.append(Holder("noisy", CF))
    for step in range(2 * n):
        now += 0.01
        ledger.free(RUNG, ended := in_flight.popleft())
        assert ended in (Holder("noisy", CF), Holder("quiet", CF))
        first, second = ("quiet", "noisy") if order[step % len(order)] else ("noisy", "quiet")
        for tenant in (first, second, first, second):
            if admit(ledger, lim, Holder(tenant, CF), now) is None:
                in_flight.append(Holder(tenant, CF))
    quiet = sum(1 for h in in_flight if h.tenant == "quiet")
    assert quiet >= n // 2
    assert len(in_flight) - quiet <= n - n // 2


@settings(max_examples=200)
@given(
    st.integers(3, 12),
    st.integers(2, 3),
    st.lists(st.permutations(TENANTS), min_size=1, max_size=20),
)
def test_a_tenant_with_demand_is_never_starved(n: int, tenants: int, orders: list[list[str]]) -> None:
    """Tenants that each want everything, asking in any order after each end: the last
    tenant to arrive gets a slot within one round of ends of the slots held before it came."""
    names = TENANTS[:tenants]
    ledger, lim, now = Ledger(), limits(n), 0.0
    in_flight: deque[Holder] = deque()
    for tenant in names[:-1]:
        while admit(ledger, lim, Holder(tenant, CF)) is None:
            in_flight.append(Holder(tenant, CF))
    late = names[-1]
    assert admit(ledger, lim, Holder(late, CF), now) is not None  # the rung was full
    for step in range(n):
        now += 0.01
        ledger.free(RUNG, in_flight.popleft())
        for tenant in [t for t in orders[step % len(orders)] if t in names] * 2:
            if admit(ledger, lim, Holder(tenant, CF), now) is None:
                in_flight.append(Holder(tenant, CF))
        if any(h.tenant == late for h in in_flight):
            return
    pytest.fail(f"{late} got no slot of {n} in {n} ends: {list(in_flight)}")


# ---- policy explain ---------------------------------------------------------------------------------


def test_explain_names_the_capacity_a_rung_is_skipped_for() -> None:
    from extproc.routing.explain import explain, features_for
    from tests.builders import make_policy, policy_data

    data = policy_data()
    data["ladders"]["main"][0]["capacity"] = {"max_in_flight": 2}
    data["ladders"]["main"][1]["capacity"] = {"max_in_flight": 4, "reserved": {"revenue_critical": 1}}
    data["ladders"]["main"][2]["capacity"] = {"max_in_flight": 4, "tenant_share": 0.5}
    policy = make_policy(**data)
    features = features_for(policy, tenant="acme", task="default", model="gpt-4o", stream=False, tools=False)
    in_flight = {"main/0": {"blue": 2}, "main/1": {"blue": 3}, "main/2": {"acme": 2}}
    result = explain(policy, features, None, in_flight)
    assert [v.reason for v in result.rungs] == [
        "capacity: rung full (2 of 2 in flight)",
        "capacity: the free slots are reserved for impacts above customer_facing (3 of 4 in flight, 3 usable)",
        "capacity: tenant 'acme' holds its share (2 of 4 in flight)",
    ]
    assert result.outcome.startswith("refused (rate_limited): no rung of the route has capacity")
    critical = features_for(
        policy, tenant="acme", task="default", model="gpt-4o", stream=False, tools=False, impact=Impact.REVENUE_CRITICAL
    )
    served = explain(policy, critical, None, in_flight)
    assert [v.serves for v in served.rungs] == [False, True, False]
    assert served.outcome == "served by secondary/claude-fallback (tier 1)"
    assert explain(policy, features, None, {}).rungs[0].serves  # nothing in flight
