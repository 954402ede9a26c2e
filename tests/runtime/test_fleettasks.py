"""What only the fleet's deferral store owes (a real redis-server, free port): several pods'
stores on one Redis see one queue, one of them claims and answers a task, a silent pod's
tasks are taken over after a lease, a tenant's capacity holds under concurrent accepts, an
acknowledged task survives the accepting process and (with appendfsync always) Redis itself
being killed with SIGKILL, and any sequence of commands leaves it where the in-memory
reference is. The contract every store shares is in test_tasks.py."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from extproc.core import DeferredTask, Dialect, Impact, TaskResult
from extproc.deferral import TaskQueue, TaskState
from extproc.policy import Deferral
from extproc.runtime.fleettasks import GROUP, PREFIX, RedisTaskStore, deferral_store
from extproc.runtime.tasks import SqliteTaskStore
from tests.stack import RedisServer


def task(task_id: str, tenant: str = "acme", at: float = 0.0) -> DeferredTask:
    return DeferredTask(task_id, tenant, "batch", Impact.DEFERRABLE, Dialect.OPENAI, "/v1/chat/completions",
                        "gpt-4o", (), f'{{"job":"{task_id}"}}'.encode(), at)  # fmt: skip


def answer(body: bytes, at: float = 1.0) -> TaskResult:
    return TaskResult(200, (("x-rungway-served-by", "primary/gpt-4o"),), body, at)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(server.url)
    c.flushdb()
    yield c
    c.close()


def pod(server: RedisServer, name: str, takeover_s: float = 60.0) -> RedisTaskStore:
    """One pod's store: its own connection, its own consumer in the drainers' group."""
    return RedisTaskStore.connect(server.url, consumer=name, takeover_s=takeover_s)


def test_a_task_accepted_on_one_pod_is_read_claimed_and_answered_once_across_pods(
    server: RedisServer, client: redis.Redis
) -> None:
    a, b = pod(server, "a"), pod(server, "b")
    assert a.accept(task("t1"), capacity=5)
    view = b.lookup("t1", "acme")
    assert view is not None and view.state is TaskState.QUEUED
    # Delivered to one drainer only: the other finds nothing new.
    seen = [c.id for c in a.replayable(1.0, per_tenant=4)] + [c.id for c in b.replayable(1.0, per_tenant=4)]
    assert seen == ["t1"]
    assert [a.claim("t1", 1.0, 30.0) is not None, b.claim("t1", 1.0, 30.0) is not None].count(True) == 1
    assert b.finish("t1", answer(b"from b")) and not a.finish("t1", answer(b"from a"))
    for store in (a, b):
        done = store.lookup("t1", "acme")
        assert done is not None and done.result == answer(b"from b")
    # Gone from the stream and from every drainer's pending list; its answer expires.
    queue = f"{PREFIX}:q:acme"
    assert client.xlen(queue) == 0 and client.xpending(queue, GROUP)["pending"] == 0
    assert 0 < client.ttl(f"{PREFIX}:task:t1") <= 3600
    a.close()
    b.close()


def test_a_silent_pods_tasks_are_taken_over_and_its_replay_once_its_lease_lapses(
    server: RedisServer, client: redis.Redis
) -> None:
    takeover_s = 1.0  # long enough that a loaded machine does not make a look silent too early
    a, b = pod(server, "a", takeover_s), pod(server, "b", takeover_s)
    for i in range(3):
        a.accept(task(f"t{i}", at=float(i)), capacity=10)
    assert [c.id for c in a.replayable(10.0, per_tenant=8)] == ["t0", "t1", "t2"]
    assert a.claim("t0", 10.0, 5.0) is not None  # mid-replay when pod a dies
    assert b.replayable(10.0, per_tenant=8) == []  # a holds them while it is alive
    time.sleep(takeover_s + 0.2)  # a said nothing that long (Redis's clock: idle time)
    assert [c.id for c in b.replayable(11.0, per_tenant=8)] == ["t1", "t2"]  # t0's replay: leased
    consumers = {c["name"]: c["pending"] for c in client.xinfo_consumers(f"{PREFIX}:q:acme", GROUP)}
    assert consumers == {b"a": 0, b"b": 3}
    later = 15.0  # a's lease on t0 lapsed
    assert [c.id for c in b.replayable(later, per_tenant=8)] == ["t0", "t1", "t2"]
    claimed = b.claim("t0", later, 30.0)
    assert claimed == task("t0", at=0.0)
    view = b.lookup("t0", "acme")
    assert view is not None and view.attempts == 2
    a.close()
    b.close()


def test_a_task_waiting_out_its_backoff_stays_with_its_drainer_while_it_lives(
    server: RedisServer, client: redis.Redis
) -> None:
    a, b = pod(server, "a"), pod(server, "b")
    a.accept(task("t1"), capacity=5)
    assert [c.id for c in a.replayable(1.0, per_tenant=4)] == ["t1"]
    a.claim("t1", 1.0, 60.0)
    a.retry("t1", not_before=5.0)
    assert a.replayable(2.0, per_tenant=4) == [] and b.replayable(6.0, per_tenant=4) == []
    assert [c.id for c in a.replayable(6.0, per_tenant=4)] == ["t1"]
    a.close()
    b.close()


def test_a_tenants_capacity_holds_under_concurrent_accepts_from_many_pods(
    server: RedisServer, client: redis.Redis
) -> None:
    pods = [pod(server, f"p{i}") for i in range(4)]

    def accept(i: int) -> bool:
        return pods[i % 4].accept(task(f"t{i}", at=float(i)), capacity=7)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(accept, range(60)))
    assert results.count(True) == 7
    assert pods[0].pending("acme") == 7 and pods[1].depth()[0] == 7
    assert pods[2].accept(task("t0"), capacity=7)  # a known id: accepted again, stored once
    for p in pods:
        p.close()


def test_forgotten_pods_leave_the_group_and_pods_with_tasks_stay(server: RedisServer, client: redis.Redis) -> None:
    quiet_s = 0.2
    gone, holder, me = pod(server, "gone", quiet_s), pod(server, "holder", quiet_s), pod(server, "me", quiet_s)
    gone.accept(task("t1"), capacity=5)
    gone.accept(task("t2", at=1.0), capacity=5)
    assert len(gone.replayable(5.0, per_tenant=1)) == 1  # takes t1
    assert len(holder.replayable(5.0, per_tenant=1)) == 1  # takes t2
    gone.finish("t1", answer(b"x"))  # "gone" holds nothing now
    time.sleep(quiet_s + 0.1)
    me.sweep(10.0, task_ttl_s=3600, result_ttl_s=3600)
    names = {c["name"] for c in client.xinfo_consumers(f"{PREFIX}:q:acme", GROUP)}
    assert names == {b"holder"}  # "gone" is forgotten; "me" never read; "holder" still holds t2
    for p in (gone, holder, me):
        p.close()


def test_a_tenants_stream_deleted_by_hand_is_made_again_rather_than_stopping_the_drainer(
    server: RedisServer, client: redis.Redis
) -> None:
    a = pod(server, "a")
    a.accept(task("t1"), capacity=5)
    a.accept(task("b1", "blue"), capacity=5)
    client.delete(f"{PREFIX}:q:acme")  # t1's entry goes with it: it waits for its TTL
    assert a.replayable(1.0, per_tenant=4) == []
    assert [c.id for c in a.replayable(1.0, per_tenant=4)] == ["b1"]  # the other tenants go on
    a.accept(task("t2", at=1.0), capacity=5)
    assert [c.id for c in a.replayable(2.0, per_tenant=4)] == ["b1", "t2"]
    a.close()


def test_an_acknowledged_task_survives_the_accepting_process_killed(server: RedisServer, client: redis.Redis) -> None:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_accept_and_die, args=(server.url,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9
    fresh = pod(server, "next")
    assert fresh.task("t1") == task("t1") and [c.id for c in fresh.replayable(1.0, per_tenant=1)] == ["t1"]
    fresh.close()


def _accept_and_die(url: str) -> None:
    RedisTaskStore.connect(url).accept(task("t1"), capacity=5)
    os._exit(9)


def test_an_acknowledged_task_survives_redis_killed_when_it_fsyncs_every_write(tmp_path: Path) -> None:
    durable = RedisServer("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    durable.start()
    try:
        store = pod(durable, "a")
        for i in range(20):
            assert store.accept(task(f"t{i}", at=float(i)), capacity=100)
        store.close()
        durable.stop()  # SIGKILL, right after the last reply
        durable.start()
        again = pod(durable, "b")
        assert again.depth() == (20, 0.0)
        assert again.task("t19") == task("t19", at=19.0)
        assert len(again.replayable(100.0, per_tenant=50)) == 20
        again.close()
    finally:
        durable.stop()


def test_the_policy_chooses_the_store(server: RedisServer, tmp_path: Path) -> None:
    fleet = deferral_store(Deferral(redis=server.url), wait_s=0.5)
    assert isinstance(fleet, RedisTaskStore)
    assert fleet._takeover_ms == 10_000  # 20 passes of 0.5 s: a dead pod's tasks move on in seconds
    fleet.close()
    short = deferral_store(Deferral(redis=server.url, lease_s=2.0), wait_s=0.5)
    assert isinstance(short, RedisTaskStore) and short._takeover_ms == 2_000  # never past a lease
    short.close()
    local = deferral_store(Deferral(store=tmp_path / "tasks.db"), wait_s=0.5)
    assert isinstance(local, SqliteTaskStore)
    local.close()


def test_an_unreachable_redis_fails_the_call_at_once_rather_than_retrying() -> None:
    from extproc.runtime.supervisor import free_port

    store = RedisTaskStore.connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    with pytest.raises(redis.ConnectionError):
        store.accept(task("t1"), capacity=5)  # the worker answers 503 and stores nothing


# ---- the Redis store behaves like the reference --------------------------------------------

IDS = st.sampled_from([f"t{i}" for i in range(6)])


class LikeTheReference(RuleBasedStateMachine):
    """Random commands with a clock that only moves forward, on the Redis store (two pods'
    stores taking turns) and on the in-memory TaskQueue: every answer and every task's view
    must agree."""

    server: RedisServer

    @initialize()
    def start(self) -> None:
        client = redis.Redis.from_url(self.server.url)
        client.flushdb()
        client.close()
        self.pods = [pod(self.server, "a"), pod(self.server, "b")]
        self.reference = TaskQueue()
        self.now = 0.0
        self.turn = 0

    def store(self) -> RedisTaskStore:
        self.turn += 1
        return self.pods[self.turn % 2]

    @rule(task_id=IDS, tenant=st.sampled_from(["acme", "blue"]), capacity=st.integers(1, 3))
    def accept(self, task_id: str, tenant: str, capacity: int) -> None:
        t = task(task_id, tenant, self.now)
        assert self.store().accept(t, capacity) == self.reference.accept(t, capacity)

    @rule(task_id=IDS, lease=st.sampled_from([1.0, 5.0]))
    def claim(self, task_id: str, lease: float) -> None:
        assert self.store().claim(task_id, self.now, lease) == self.reference.claim(task_id, self.now, lease)

    @rule(task_id=IDS, wait=st.sampled_from([0.0, 2.0]))
    def retry(self, task_id: str, wait: float) -> None:
        self.store().retry(task_id, self.now + wait)
        self.reference.retry(task_id, self.now + wait)

    @rule(task_id=IDS, body=st.binary(max_size=8))
    def finish(self, task_id: str, body: bytes) -> None:
        result = answer(body, self.now)
        assert self.store().finish(task_id, result) == self.reference.finish(task_id, result)

    @rule(step=st.sampled_from([0.5, 1.0, 3.0]))
    def tick(self, step: float) -> None:
        self.now += step

    @precondition(lambda self: self.now > 0)
    @rule()
    def sweep(self) -> None:
        mine = self.store().sweep(self.now, task_ttl_s=8.0, result_ttl_s=4.0)
        theirs = self.reference.sweep(self.now, task_ttl_s=8.0, result_ttl_s=4.0)
        assert sorted(mine.expired) == sorted(theirs.expired) and mine.dropped == theirs.dropped

    @invariant()
    def same_views(self) -> None:
        for i in range(6):
            for tenant in ("acme", "blue"):
                assert self.pods[0].lookup(f"t{i}", tenant) == self.reference.lookup(f"t{i}", tenant)
        assert self.pods[1].depth() == self.reference.depth()
        for tenant in ("acme", "blue"):
            assert self.pods[0].pending(tenant) == self.reference.pending(tenant)

    def teardown(self) -> None:
        for p in getattr(self, "pods", []):
            p.close()


def test_the_redis_store_behaves_like_the_reference(server: RedisServer) -> None:
    LikeTheReference.server = server
    run_state_machine_as_test(LikeTheReference, settings=settings(max_examples=40, stateful_step_count=25))
