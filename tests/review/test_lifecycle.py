"""A review's lifecycle as data (pending → rerunning → done, back to pending on a failed
re-run), what a re-run's answer means, and its backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.review import TRANSITIONS, IllegalReviewTransition, ReviewState, Verdict, rerun_delay, rerun_verdict
from extproc.review.lifecycle import check


def test_a_done_review_never_moves_again() -> None:
    assert not [t for t in TRANSITIONS if t[0] is ReviewState.DONE]
    with pytest.raises(IllegalReviewTransition, match="from done to pending"):
        check(ReviewState.DONE, ReviewState.PENDING)


def test_only_a_200_from_the_pinned_tier_0_rung_is_a_done_re_run() -> None:
    assert rerun_verdict(200, "0", "primary/gpt-4o", "primary/gpt-4o") is Verdict.DONE
    assert rerun_verdict(200, "1", "secondary/claude", "primary/gpt-4o") is Verdict.RETRY
    assert rerun_verdict(200, "0", "other/gpt-4o", "primary/gpt-4o") is Verdict.RETRY
    assert rerun_verdict(200, "4", "rungway/static", "primary/gpt-4o") is Verdict.RETRY  # our own answer
    assert rerun_verdict(503, "0", "primary/gpt-4o", "primary/gpt-4o") is Verdict.RETRY
    assert rerun_verdict(0, "", "", "primary/gpt-4o") is Verdict.RETRY  # Envoy not reached


@given(st.integers(1, 40), st.integers(0, 2**32))
def test_the_backoff_grows_with_failures_within_its_bounds(failures: int, seed: int) -> None:
    delay = rerun_delay(failures, random.Random(seed))
    step = min(600.0, 5.0 * 2 ** (failures - 1))
    assert step / 2 <= delay <= step
