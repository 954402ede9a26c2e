"""Tenants' spend against their budgets (T4): windows, the cost-rate guardrail, Retry-After."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extproc.policy import Budget
from extproc.routing.spend import SpendLedger

HOUR = 3600.0
T0 = 1_767_225_600.0  # on the hour


def test_tokens_and_cost_count_in_the_current_window_and_start_afresh_in_the_next() -> None:
    ledger = SpendLedger({"acme": HOUR})
    budget = Budget(max_tokens=1000, max_cost=2.0)
    ledger.record("acme", 600, 0.5, T0 + 10)
    assert ledger.over("acme", budget, T0 + 20) is None
    ledger.record("acme", 400, 0.5, T0 + 30)
    over = ledger.over("acme", budget, T0 + 40)
    assert over is not None and over.reason == "tokens" and over.retry_after_s == HOUR - 40
    assert ledger.over("acme", budget, T0 + HOUR + 1) is None  # the next hour
    assert ledger.over("blue", budget, T0 + 40) is None  # another tenant's spend is its own


def test_a_spend_of_an_earlier_window_arriving_late_is_not_counted_in_the_current_one() -> None:
    ledger = SpendLedger({}, default_window_s=HOUR)
    ledger.record("acme", 10, 1.0, T0 + HOUR + 5)
    ledger.record("acme", 10, 1.0, T0 + 5)  # from a replica's last hour, delivered late
    assert ledger.spent("acme", T0 + HOUR + 6)[:2] == (10, 1.0)


def test_the_cost_rate_guardrail_trips_within_a_minute_and_clears_as_the_minute_moves_on() -> None:
    ledger = SpendLedger({})
    budget = Budget(max_cost=1000.0, max_cost_per_minute=1.0)
    for i in range(5):
        ledger.record("acme", 100, 0.25, T0 + i)
    over = ledger.over("acme", budget, T0 + 5)
    assert over is not None and over.reason == "cost_rate"
    assert over.retry_after_s == 56  # at T0+61 the spends of T0 and T0+1 are out: 0.75 < 1.0
    assert ledger.over("acme", budget, T0 + 61) is None


def test_no_budget_is_never_over() -> None:
    ledger = SpendLedger({})
    ledger.record("acme", 10**9, 1e9, T0)
    assert ledger.over("acme", None, T0) is None


@given(st.lists(st.tuples(st.integers(0, 500), st.floats(0, 3), st.floats(0, 120)), max_size=60))
def test_window_sums_equal_the_spends_of_that_window(spends: list[tuple[int, float, float]]) -> None:
    ledger = SpendLedger({}, default_window_s=300.0)
    now = T0
    for tokens, cost, step in spends:
        now += step
        ledger.record("acme", tokens, cost, now)
    window = int(now // 300)
    expected_tokens = expected_cost = 0.0
    t = T0
    for tokens, cost, step in spends:
        t += step
        if int(t // 300) == window:
            expected_tokens += tokens
            expected_cost += cost
    got_tokens, got_cost, _ = ledger.spent("acme", now)
    assert got_tokens == expected_tokens and abs(got_cost - expected_cost) < 1e-6
