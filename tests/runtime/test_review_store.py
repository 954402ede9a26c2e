"""One contract suite over every ReviewStore (in memory and SQLite), and what only the SQLite
store owes: durability across reopening, a 0600 file."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.core import DegradedAnswer, Dialect, Impact
from extproc.review import Answer, ReviewState, diff_answers
from extproc.runtime.review import MemoryReviewStore, Rerun, ReviewStore, SqliteReviewStore, detail, summary


def item(review_id: str, tenant: str = "acme", at: float = 0.0) -> DegradedAnswer:
    return DegradedAnswer(review_id, tenant, "default", Impact.CUSTOMER_FACING, Dialect.OPENAI,
                          "/v1/chat/completions", "gpt-4o", (), "main", 1, 1, "secondary/claude-fallback",
                          "server_error", "v+1", f"req-{review_id}", "ab" * 32, at, b'{"model":"gpt-4o"}',
                          b'{"choices":[{"message":{"content":"Paris"}}]}')  # fmt: skip


def rerun(at: float = 5.0) -> Rerun:
    diff = diff_answers(Answer("Paris", None, (), None, None), Answer("Paris.", "stop", (), None, 3), "a/b", "c/d")
    return Rerun("primary/gpt-4o", b'{"choices":[{"message":{"content":"Paris."}}]}', diff, at)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    if request.param == "memory":
        yield MemoryReviewStore()
        return
    s = SqliteReviewStore(tmp_path / "reviews.db")
    yield s
    s.close()


def test_keep_stores_the_answer_whole_and_bounds_each_tenant(store: ReviewStore) -> None:
    assert store.keep(item("a1"), max_per_tenant=2)
    assert store.keep(item("a2", at=1.0), max_per_tenant=2)
    assert not store.keep(item("a3"), max_per_tenant=2)
    assert store.keep(item("b1", "blue"), max_per_tenant=2)  # another tenant's room is its own
    assert store.keep(item("a1"), max_per_tenant=2)  # the same id again: kept once
    view = store.get("a1")
    assert view is not None and (view.item, view.state, view.attempts, view.rerun) == (
        item("a1"), ReviewState.PENDING, 0, None
    )  # fmt: skip
    assert store.counts() == {ReviewState.PENDING: 3, ReviewState.RERUNNING: 0, ReviewState.DONE: 0}


def test_a_claim_wins_once_until_its_lease_lapses(store: ReviewStore) -> None:
    store.keep(item("a1"), 5)
    assert store.rerunnable(0.0, 10) == [item("a1")]
    assert store.claim("a1", 0.0, 10.0) == item("a1")
    assert store.claim("a1", 5.0, 10.0) is None
    assert store.rerunnable(9.0, 10) == []
    assert store.rerunnable(10.0, 10) == [item("a1")]  # the lease lapsed: a re-runner died
    assert store.claim("a1", 10.0, 10.0) == item("a1")
    view = store.get("a1")
    assert view is not None and view.attempts == 2


def test_a_failed_re_run_waits_out_its_backoff(store: ReviewStore) -> None:
    store.keep(item("a1"), 5)
    store.claim("a1", 0.0, 10.0)
    store.retry("a1", not_before=3.0)
    assert store.rerunnable(2.0, 10) == [] and store.claim("a1", 2.0, 10.0) is None
    assert store.claim("a1", 3.0, 10.0) == item("a1")


def test_the_first_re_run_is_kept_and_a_done_review_stays_done(store: ReviewStore) -> None:
    store.keep(item("a1"), 5)
    store.claim("a1", 0.0, 10.0)
    assert store.finish("a1", rerun())
    assert not store.finish("a1", rerun(at=9.0))
    store.retry("a1", 100.0)  # a late retry changes nothing
    view = store.get("a1")
    assert view is not None and view.state is ReviewState.DONE and view.rerun == rerun()
    assert store.rerunnable(1000.0, 10) == [] and store.claim("a1", 1000.0, 10.0) is None
    shown = detail(view)
    assert shown["rerun_answer"] == {"choices": [{"message": {"content": "Paris."}}]}
    assert summary(view)["changes"] == ["finish_reason", "output_tokens"]


def test_reviews_older_than_the_ttl_go_and_pending_ones_count_as_expired(store: ReviewStore) -> None:
    store.keep(item("old", at=0.0), 5)
    store.keep(item("done", "blue", at=0.0), 5)
    store.claim("done", 0.0, 10.0)
    store.finish("done", rerun())
    store.keep(item("new", at=50.0), 5)
    assert store.sweep(now=100.0, ttl_s=60.0) == ["acme"]
    assert [v.item.id for v in store.select(None, None, 10)] == ["new"]


def test_select_filters_by_tenant_and_time_and_keeps_the_latest(store: ReviewStore) -> None:
    for i in range(4):
        store.keep(item(f"a{i}", at=float(i)), 10)
    store.keep(item("b0", "blue", at=1.5), 10)
    assert [v.item.id for v in store.select("acme", None, 10)] == ["a0", "a1", "a2", "a3"]
    assert [v.item.id for v in store.select(None, 1.0, 10)] == ["a1", "b0", "a2", "a3"]
    assert [v.item.id for v in store.select("acme", None, 2)] == ["a2", "a3"]
    assert store.get("missing") is None


def test_the_sqlite_store_survives_reopening_and_only_its_user_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "reviews.db"
    first = SqliteReviewStore(path)
    first.keep(item("a1"), 5)
    first.claim("a1", 0.0, 10.0)
    first.finish("a1", rerun())
    first.keep(item("a2"), 5)
    first.close()
    again = SqliteReviewStore(path)
    done, pending = again.get("a1"), again.get("a2")
    assert done is not None and done.rerun == rerun() and done.state is ReviewState.DONE
    assert pending is not None and pending.state is ReviewState.PENDING
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again.close()
