"""Which tier serves each tenant's task class (T2 notices): a change is told once, both ways."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extproc.routing.tiers import MAX_WATCHED, TierWatch


def test_a_degradation_and_the_recovery_are_each_told_once() -> None:
    watch = TierWatch()
    assert watch.served("clinic", "default", 0, 1.0, "primary/gpt-4o") is None  # tier 0 from the start
    change = watch.served("clinic", "default", 1, 2.0, "backup/claude")
    assert change is not None and (change.previous, change.tier, change.direction) == (0, 1, "degraded")
    assert watch.served("clinic", "default", 1, 3.0, "backup/claude") is None  # still tier 1: told already
    back = watch.served("clinic", "default", 0, 4.0, "primary/gpt-4o")
    assert back is not None and (back.previous, back.tier, back.direction) == (1, 0, "recovered")
    assert watch.served("clinic", "summarize", 2, 5.0, "small/x") is not None  # another task class: its own


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 3)), max_size=50))
def test_changes_are_exactly_where_the_tier_differs_from_the_last(served: list[tuple[str, int]]) -> None:
    watch = TierWatch()
    last: dict[str, int] = {}
    for i, (tenant, tier) in enumerate(served):
        change = watch.served(tenant, "t", tier, float(i), "x/y")
        assert (change is not None) == (tier != last.get(tenant, 0))
        last[tenant] = tier


def test_the_watch_stays_bounded() -> None:
    watch = TierWatch()
    for i in range(MAX_WATCHED + 10):
        watch.served(f"t{i}", "default", 1, 0.0, "x/y")
    assert watch.served("t0", "default", 1, 1.0, "x/y") is not None  # forgotten first: told again


def test_a_recovery_names_the_rung_it_came_back_from() -> None:
    watch = TierWatch()
    watch.served("app", "default", 1, 1.0, "backup/claude", ("main", 1))
    back = watch.served("app", "default", 0, 2.0, "primary/gpt-4o", ("main", 0))
    assert back is not None and back.previous_rung == ("main", 1) and back.direction == "recovered"
