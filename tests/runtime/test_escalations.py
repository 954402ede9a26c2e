"""One contract suite over every EscalationStore (the in-memory reference and SQLite), and what
only the SQLite store owes: the held request survives reopening the file, two processes'
decisions on one escalation have one winner."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from extproc.audit import Entry, Kind, sentence
from extproc.core import DeferredTask, Dialect, Escalation, Impact, Resolution, Review, Step, TaskResult
from extproc.deferral import TaskState
from extproc.escalation import EscalationState, IllegalEscalationError
from extproc.health.board import Board
from extproc.runtime.drainer import Drainer
from extproc.runtime.escalations import (
    EscalationStore,
    MemoryEscalations,
    NoSuchEscalationError,
    SqliteEscalations,
)
from extproc.runtime.sidecar import configured_baselines, configured_endpoints
from extproc.runtime.tasks import SqliteTaskStore, TaskStore
from tests.builders import make_policy


def held_task(task_id: str, tenant: str = "acme", at: float = 0.0) -> DeferredTask:
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"refund?"}]}'
    return DeferredTask(task_id, tenant, "chat", Impact.REVENUE_CRITICAL, Dialect.OPENAI, "/v1/chat/completions",
                        "gpt-4o", (), body, at)  # fmt: skip


def record(task_id: str, tenant: str = "acme", at: float = 0.0) -> Escalation:
    return Escalation(task_id, tenant, "chat", Impact.REVENUE_CRITICAL, "main", 1, 1, "secondary/claude",
                      ("tier",), (Step(0, "server_error"), Step(1, "served")), "p+1", "req-1", "ab" * 32, at,
                      has_candidate=True)  # fmt: skip


CANDIDATE = TaskResult(200, (("content-type", "application/json"),), b'{"choices":[]}', 0.0)


@pytest.fixture(params=["memory", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[EscalationStore, TaskStore]]:
    """An escalation store and the task store its tasks live in (the drainer's, the client's)."""
    if request.param == "memory":
        memory = MemoryEscalations()
        yield memory, memory.queue
        return
    escalations = SqliteEscalations(tmp_path / "tasks.db")
    tasks = SqliteTaskStore(tmp_path / "tasks.db")
    yield escalations, tasks
    escalations.close()
    tasks.close()


def decision(review: Review, rung: int | None = None, at: float = 5.0) -> Resolution:
    return Resolution(review, "ana", "INC-7", at, rung)


def test_a_held_request_is_an_escalated_task_outside_the_replay_queue(
    stores: tuple[EscalationStore, TaskStore],
) -> None:
    escalations, tasks = stores
    escalations.escalate(held_task("e1"), record("e1"), CANDIDATE)
    escalations.escalate(held_task("e1"), record("e1", at=9.0), None)  # the same id again: kept once
    view = escalations.escalation("e1")
    assert view is not None
    assert (view.state, view.escalation, view.task, view.candidate) == (
        EscalationState.OPEN,
        record("e1"),
        held_task("e1"),
        CANDIDATE,
    )
    assert not view.notified and view.resolution is None
    looked = tasks.lookup("e1", "acme")
    assert looked is not None and looked.state is TaskState.ESCALATED
    assert tasks.lookup("e1", "other") is None  # another tenant's task does not exist for it
    assert tasks.replayable(100.0, per_tenant=8) == []  # held for a person, never replayed
    assert tasks.pending("acme") == 0  # nor counted against the tenant's deferral room
    assert escalations.escalation("nope") is None


def test_approving_the_candidate_answers_the_client(stores: tuple[EscalationStore, TaskStore]) -> None:
    escalations, tasks = stores
    escalations.escalate(held_task("e1"), record("e1"), CANDIDATE)
    decided = escalations.resolve("e1", decision(Review.APPROVE), CANDIDATE)
    assert decided.state is EscalationState.APPROVED and decided.resolution == decision(Review.APPROVE)
    looked = tasks.lookup("e1", "acme")
    assert looked is not None and looked.state is TaskState.DONE and looked.result == CANDIDATE


def test_a_redirect_queues_a_reviewed_replay_pinned_to_its_rung(stores: tuple[EscalationStore, TaskStore]) -> None:
    escalations, tasks = stores
    escalations.escalate(held_task("e1"), record("e1"), CANDIDATE)
    decided = escalations.resolve("e1", decision(Review.REDIRECT, rung=2), None)
    assert decided.state is EscalationState.REDIRECTED
    assert [c.id for c in tasks.replayable(5.0, per_tenant=8)] == ["e1"]
    claimed = tasks.claim("e1", 5.0, 10.0)
    assert claimed is not None and (claimed.reviewed, claimed.pin) == (True, 2)
    assert tasks.finish("e1", TaskResult(200, (), b"replayed", 6.0))
    after = escalations.escalation("e1")
    assert after is not None and after.state is EscalationState.REDIRECTED  # the decision stands


def test_approving_without_a_candidate_replays_the_request_as_it_is(
    stores: tuple[EscalationStore, TaskStore],
) -> None:
    escalations, tasks = stores
    escalations.escalate(held_task("e1"), record("e1"), None)
    escalations.resolve("e1", decision(Review.APPROVE), None)
    claimed = tasks.claim("e1", 5.0, 10.0)
    assert claimed is not None and (claimed.reviewed, claimed.pin) == (True, None)


def test_a_decision_is_taken_once(stores: tuple[EscalationStore, TaskStore]) -> None:
    escalations, _ = stores
    escalations.escalate(held_task("e1"), record("e1"), CANDIDATE)
    escalations.resolve("e1", decision(Review.REJECT), TaskResult(403, (), b"no", 5.0))
    with pytest.raises(IllegalEscalationError):
        escalations.resolve("e1", decision(Review.APPROVE), CANDIDATE)
    with pytest.raises(NoSuchEscalationError):
        escalations.resolve("nope", decision(Review.APPROVE), CANDIDATE)
    view = escalations.escalation("e1")
    assert view is not None and view.state is EscalationState.REJECTED


def test_an_escalation_no_one_decided_expires_with_its_task(stores: tuple[EscalationStore, TaskStore]) -> None:
    escalations, tasks = stores
    escalations.escalate(held_task("e1", at=0.0), record("e1"), CANDIDATE)
    escalations.escalate(held_task("e2", at=50.0), record("e2", at=50.0), CANDIDATE)
    swept = tasks.sweep(100.0, task_ttl_s=60.0, result_ttl_s=3600.0)
    assert swept.escalations_expired == ("acme",) and swept.expired == ()
    states = {v.escalation.id: v.state for v in escalations.escalations()}
    assert states == {"e1": EscalationState.EXPIRED, "e2": EscalationState.OPEN}
    assert [v.escalation.id for v in escalations.escalations(open_only=True)] == ["e2"]
    with pytest.raises(IllegalEscalationError):
        escalations.resolve("e1", decision(Review.APPROVE), CANDIDATE)


def test_lists_are_oldest_first_by_tenant_and_webhooks_are_marked(stores: tuple[EscalationStore, TaskStore]) -> None:
    escalations, _ = stores
    escalations.escalate(held_task("e2", at=2.0), record("e2", at=2.0), None)
    escalations.escalate(held_task("e1", "blue", at=1.0), record("e1", "blue", at=1.0), None)
    assert [v.escalation.id for v in escalations.escalations()] == ["e1", "e2"]
    assert [v.escalation.id for v in escalations.escalations("acme")] == ["e2"]
    assert [v.escalation.id for v in escalations.unnotified(1)] == ["e1"]
    escalations.mark_notified("e1")
    assert [v.escalation.id for v in escalations.unnotified(8)] == ["e2"]
    view = escalations.escalation("e1")
    assert view is not None and view.notified


def test_a_held_request_survives_reopening_the_file(tmp_path: Path) -> None:
    first = SqliteEscalations(tmp_path / "tasks.db")
    first.escalate(held_task("e1"), record("e1"), CANDIDATE)
    first.close()
    again = SqliteEscalations(tmp_path / "tasks.db")
    view = again.escalation("e1")
    assert view is not None and view.state is EscalationState.OPEN and view.candidate == CANDIDATE
    again.close()


def _decide(path: Path, review: str, out: multiprocessing.Queue[str]) -> None:
    store = SqliteEscalations(path)
    try:
        store.resolve("e1", Resolution(Review(review), "ana", "", 5.0), CANDIDATE)
        out.put(review)
    except IllegalEscalationError:
        out.put("refused")
    finally:
        store.close()


def test_two_processes_deciding_at_once_have_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteEscalations(path)
    store.escalate(held_task("e1"), record("e1"), CANDIDATE)
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_decide, args=(path, review, results)) for review in ("approve", "reject")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes.count("refused") == 1
    view = store.escalation("e1")
    assert view is not None and view.state.value in ("approved", "rejected")
    store.close()


class EscalationMachine(RuleBasedStateMachine):
    """Random holds, decisions, replays and time passing over the in-memory store: a decision is
    taken once and never changes, an open escalation's task waits (never replayed), a decided
    one's task is answered or queued as the decision says."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryEscalations()
        self.now = 0.0
        self.decided: dict[str, Resolution] = {}
        self.ids: list[str] = []

    @rule(tenant=st.sampled_from(["acme", "blue"]))
    def hold(self, tenant: str) -> None:
        task_id = f"e{len(self.ids)}"
        self.ids.append(task_id)
        self.store.escalate(held_task(task_id, tenant, self.now), record(task_id, tenant, self.now), CANDIDATE)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), review=st.sampled_from(list(Review)), with_answer=st.booleans())
    def decide(self, data: st.DataObject, review: Review, with_answer: bool) -> None:
        task_id = data.draw(st.sampled_from(self.ids))
        view = self.store.escalation(task_id)
        assert view is not None
        resolution = Resolution(review, "ana", "", self.now, 1 if review is Review.REDIRECT else None)
        answer = CANDIDATE if with_answer and review is not Review.REDIRECT else None
        if view.state is not EscalationState.OPEN:
            with pytest.raises(IllegalEscalationError):
                self.store.resolve(task_id, resolution, answer)
            return
        assert self.store.resolve(task_id, resolution, answer).resolution == resolution
        self.decided[task_id] = resolution

    @rule(seconds=st.floats(0, 50))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.store.queue.sweep(self.now, task_ttl_s=100.0, result_ttl_s=1e9)

    @rule()
    def replay(self) -> None:
        for candidate in self.store.queue.replayable(self.now, per_tenant=8):
            claimed = self.store.queue.claim(candidate.id, self.now, 10.0)
            assert claimed is not None and claimed.reviewed  # only a decided escalation is replayed
            self.store.queue.finish(candidate.id, TaskResult(200, (), b"replayed", self.now))

    @invariant()
    def decisions_stand_and_tasks_follow_them(self) -> None:
        for view in self.store.escalations():
            task = self.store.queue.lookup(view.escalation.id, view.escalation.tenant)
            assert task is not None
            if view.escalation.id in self.decided:
                assert view.resolution == self.decided[view.escalation.id]
                assert task.state is not TaskState.ESCALATED
            elif view.state is EscalationState.OPEN:
                assert task.state is TaskState.ESCALATED
            else:
                assert view.state is EscalationState.EXPIRED and task.state is TaskState.EXPIRED


TestEscalationMachine = EscalationMachine.TestCase


async def test_an_escalation_no_one_decided_on_in_time_is_an_audit_record() -> None:
    # The drainer's sweep expires it (the status URL says 410): the trail says so, as it says
    # every other outcome of an escalation.
    policy = make_policy(
        tenants={"acme": {"escalate": {"impact": "customer_facing", "tier": 1}}},
        deferral={"store": "unused.db", "task_ttl_s": 60},
        escalation={"webhook_url": "https://oncall.test/hook", "secret": {"env": "RW_UNIT_ESCALATION"}},
    )
    store = MemoryEscalations()
    old = time.time() - 120
    store.escalate(held_task("e1", at=old), record("e1", at=old), None)
    store.escalate(held_task("e2", at=time.time()), record("e2"), None)
    audited: list[Entry] = []
    board = Board(policy.health, configured_baselines(policy), configured_endpoints(policy))
    drainer = Drainer(policy, store.queue, board, "pod-secret", lambda: None, audit=audited.append)
    async with aiohttp.ClientSession() as session:
        await drainer.pass_once(session)
    view = store.escalation("e1")
    assert view is not None and view.state is EscalationState.EXPIRED
    assert [(e.kind, e.tenant, e.trigger, e.detail) for e in audited] == [
        (Kind.DEFERRAL, "acme", "escalation_expired", {"tasks": 1})
    ]
    assert sentence(audited[0]) == "1 escalated task(s) expired without a person's decision"
