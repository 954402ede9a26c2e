"""The deferral queue's pure rules: lifecycle, fairness, replay verdicts, backoff, and the
in-memory TaskQueue as a Hypothesis state machine (capacity, first answer wins, TTLs)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from extproc.core import DeferredTask, Dialect, Impact, TaskResult
from extproc.deferral import (
    Candidate,
    IllegalTransitionError,
    TaskQueue,
    TaskState,
    Verdict,
    fair_order,
    replay_verdict,
    retry_delay,
    transition,
)

TENANTS = ("acme", "blue", "cyan")


def task(task_id: str, tenant: str = "acme", at: float = 0.0) -> DeferredTask:
    return DeferredTask(
        id=task_id,
        tenant=tenant,
        task="default",
        impact=Impact.DEFERRABLE,
        dialect=Dialect.OPENAI,
        path="/v1/chat/completions",
        model="gpt-4o",
        headers=(),
        body=b'{"model":"gpt-4o","messages":[]}',
        accepted_at=at,
    )


def result(body: bytes = b"{}", at: float = 0.0) -> TaskResult:
    return TaskResult(200, (("content-type", "application/json"),), body, at)


def test_a_done_task_never_runs_again_and_an_expired_one_never_finishes() -> None:
    assert transition(TaskState.QUEUED, TaskState.RUNNING) is TaskState.RUNNING
    for source, target in [
        (TaskState.DONE, TaskState.RUNNING),
        (TaskState.DONE, TaskState.QUEUED),
        (TaskState.EXPIRED, TaskState.DONE),
        (TaskState.EXPIRED, TaskState.RUNNING),
        (TaskState.QUEUED, TaskState.QUEUED),
    ]:
        with pytest.raises(IllegalTransitionError, match=f"from {source.value} to {target.value}"):
            transition(source, target)


candidates = st.lists(
    st.builds(Candidate, st.uuids().map(str), st.sampled_from(TENANTS), st.floats(0, 1000)),
    max_size=40,
    unique_by=lambda c: c.id,
)


@given(candidates, st.dictionaries(st.sampled_from(TENANTS), st.floats(0, 1000)))
def test_fair_order_serves_tenants_in_rounds_each_oldest_first(
    found: list[Candidate], last_served: dict[str, float]
) -> None:
    order = fair_order(found, last_served)
    assert sorted(c.id for c in order) == sorted(c.id for c in found)
    seen: dict[str, int] = {}
    rounds = []
    for c in order:
        rounds.append(seen.get(c.tenant, 0))
        seen[c.tenant] = seen.get(c.tenant, 0) + 1
    assert rounds == sorted(rounds)  # every tenant's k-th task before anyone's (k+1)-th
    for tenant in TENANTS:
        mine = [(c.accepted_at, c.id) for c in order if c.tenant == tenant]
        assert mine == sorted(mine)


def test_a_tenant_with_a_backlog_delays_another_by_one_task_only() -> None:
    backlog = [Candidate(f"a{i}", "acme", float(i)) for i in range(100)]
    late = Candidate("b0", "blue", 500.0)
    assert [c.id for c in fair_order([*backlog, late])][:3] == ["a0", "b0", "a1"]


def test_a_tenant_served_last_pass_goes_after_one_that_was_not() -> None:
    backlog = [Candidate(f"a{i}", "acme", float(i)) for i in range(5)]
    late = Candidate("b0", "blue", 500.0)
    # One replay slot a pass: acme was just served, so blue's only task is next.
    assert fair_order([*backlog, late], {"acme": 10.0})[0].id == "b0"
    assert fair_order([*backlog, late], {"acme": 10.0, "blue": 11.0})[0].id == "a0"


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DONE),
        (400, Verdict.DONE),  # the request itself is bad: that is its answer
        (404, Verdict.DONE),
        (401, Verdict.RETRY),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
    ],
)
def test_only_answers_end_a_task_and_outages_send_it_back(status: int, verdict: Verdict) -> None:
    assert replay_verdict(status, "primary/gpt-4o") is verdict


def test_a_stand_in_answer_rungway_made_up_is_not_the_answer_a_task_waits_for() -> None:
    assert replay_verdict(200, "rungway/static") is Verdict.RETRY
    assert replay_verdict(400, "rungway") is Verdict.DONE  # the request's own fault is its answer


@given(st.integers(1, 100), st.integers(0, 2**32))
def test_retry_delay_grows_then_stays_under_its_cap(attempts: int, seed: int) -> None:
    delay = retry_delay(attempts, random.Random(seed), base_s=1.0, cap_s=60.0)
    step = min(60.0, 2.0 ** min(attempts - 1, 16))
    assert step / 2 <= delay <= step


def test_a_lapsed_lease_makes_a_running_task_due_again() -> None:
    queue = TaskQueue()
    assert queue.accept(task("t1"), capacity=5)
    assert queue.claim("t1", now=10.0, lease_s=30.0) is not None
    assert queue.claim("t1", now=20.0, lease_s=30.0) is None  # leased to the first replay
    assert queue.replayable(39.0, per_tenant=5) == []
    assert [c.id for c in queue.replayable(40.0, per_tenant=5)] == ["t1"]
    assert queue.claim("t1", now=40.0, lease_s=30.0) is not None
    assert queue.snapshot() == {"t1": {"tenant": "acme", "state": "running", "attempts": 2}}


def test_the_first_answer_wins_and_a_duplicate_replay_changes_nothing() -> None:
    queue = TaskQueue()
    queue.accept(task("t1"), capacity=5)
    queue.claim("t1", now=0.0, lease_s=1.0)
    queue.claim("t1", now=2.0, lease_s=1.0)  # the lease lapsed: a second replay runs
    assert queue.finish("t1", result(b"first"))
    assert not queue.finish("t1", result(b"second"))
    view = queue.lookup("t1", "acme")
    assert view is not None and view.result is not None and view.result.body == b"first"


def test_a_tenant_cannot_see_another_tenants_task() -> None:
    queue = TaskQueue()
    queue.accept(task("t1", "acme"), capacity=5)
    assert queue.lookup("t1", "blue") is None
    assert queue.lookup("t1", "acme") is not None


class QueueMachine(RuleBasedStateMachine):
    """Random accepts, claims, replays, answers and time passing: capacity is never exceeded, an
    answer never changes, and an accepted task stays findable until its TTLs say otherwise."""

    CAPACITY = 3
    LEASE_S = 5.0
    TASK_TTL_S = 100.0
    RESULT_TTL_S = 50.0

    def __init__(self) -> None:
        super().__init__()
        self.queue = TaskQueue()
        self.now = 0.0
        self.accepted: dict[str, DeferredTask] = {}
        self.answers: dict[str, bytes] = {}
        self.ended_at: dict[str, float] = {}
        self.n = 0

    @rule(tenant=st.sampled_from(TENANTS))
    def accept(self, tenant: str) -> None:
        self.n += 1
        t = task(f"t{self.n}", tenant, self.now)
        pending_before = self.queue.pending(tenant)
        ok = self.queue.accept(t, self.CAPACITY)
        assert ok == (pending_before < self.CAPACITY)
        if ok:
            self.accepted[t.id] = t

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.accepted)))
        due = {c.id for c in self.queue.replayable(self.now, per_tenant=100)}
        claimed = self.queue.claim(task_id, self.now, self.LEASE_S)
        assert (claimed is not None) == (task_id in due)

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data(), answer=st.binary(max_size=4), ok=st.booleans())
    def replay_ends(self, data: st.DataObject, answer: bytes, ok: bool) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.accepted)))
        view = self.queue.lookup(task_id, self.accepted[task_id].tenant)
        if ok:
            first = self.queue.finish(task_id, result(answer, self.now))
            if first:
                assert task_id not in self.answers
                self.answers[task_id] = answer
                self.ended_at[task_id] = self.now
            else:
                assert view is None or view.state in (TaskState.DONE, TaskState.EXPIRED)
        else:
            self.queue.retry(task_id, self.now + 1.0)

    @rule(dt=st.floats(0.0, 40.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.queue.sweep(self.now, self.TASK_TTL_S, self.RESULT_TTL_S)

    @invariant()
    def capacity_holds(self) -> None:
        for tenant in TENANTS:
            assert self.queue.pending(tenant) <= self.CAPACITY

    @invariant()
    def answers_never_change_and_nothing_is_lost_early(self) -> None:
        for task_id, t in self.accepted.items():
            view = self.queue.lookup(task_id, t.tenant)
            if task_id in self.answers:
                if self.now - self.ended_at[task_id] < self.RESULT_TTL_S:
                    assert view is not None and view.result is not None
                    assert view.result.body == self.answers[task_id]
            elif self.now - t.accepted_at < self.TASK_TTL_S:
                assert view is not None and view.state in (TaskState.QUEUED, TaskState.RUNNING)


TestQueueMachine = QueueMachine.TestCase
