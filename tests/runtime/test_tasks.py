"""One contract suite over every TaskStore (the in-memory reference, SQLite and Redis), and what
only the SQLite store owes: durability across processes and reopening, one winner per claim.
What only the Redis store owes is in test_fleettasks.py."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from extproc.core import DeferredTask, Dialect, Impact, TaskResult
from extproc.deferral import TaskState
from extproc.runtime.fleettasks import RedisTaskStore
from extproc.runtime.tasks import MemoryTaskStore, SqliteTaskStore, TaskStore
from tests.stack import RedisServer


def task(task_id: str, tenant: str = "acme", at: float = 0.0) -> DeferredTask:
    return DeferredTask(task_id, tenant, "batch", Impact.DEFERRABLE, Dialect.ANTHROPIC, "/v1/messages",
                        "claude-x", (("anthropic-version", "2023-06-01"),), b'{"model":"claude-x"}', at)  # fmt: skip


def answer(body: bytes, at: float = 1.0) -> TaskResult:
    return TaskResult(200, (("x-rungway-served-by", "primary/gpt-4o"),), body, at)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "memory":
        yield MemoryTaskStore()
        return
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        client.flushdb()
        fleet = RedisTaskStore(client)
        yield fleet
        fleet.close()
        return
    s = SqliteTaskStore(tmp_path / "tasks.db")
    yield s
    s.close()


def test_accept_stores_the_task_whole_and_bounds_each_tenant(store: TaskStore) -> None:
    assert store.accept(task("a1"), capacity=2)
    assert store.accept(task("a2"), capacity=2)
    assert not store.accept(task("a3"), capacity=2)
    assert store.accept(task("b1", "blue"), capacity=2)  # another tenant's room is its own
    assert store.accept(task("a1"), capacity=2)  # the same id again: kept once
    assert store.pending("acme") == 2
    assert store.task("a1") == task("a1")
    assert store.depth() == (3, 0.0)


def test_an_answered_task_frees_its_tenants_room(store: TaskStore) -> None:
    store.accept(task("a1"), capacity=1)
    assert store.claim("a1", 0.0, 10.0) is not None
    assert store.finish("a1", answer(b"ok"))
    assert store.accept(task("a2"), capacity=1)


def test_a_claim_wins_once_until_its_lease_lapses(store: TaskStore) -> None:
    store.accept(task("a1"), capacity=5)
    assert store.claim("a1", 0.0, 10.0) == task("a1")
    assert store.claim("a1", 5.0, 10.0) is None
    assert store.replayable(9.0, per_tenant=5) == []
    assert store.claim("a1", 10.0, 10.0) == task("a1")
    view = store.lookup("a1", "acme")
    assert view is not None and (view.state, view.attempts) == (TaskState.RUNNING, 2)


def test_a_retried_task_waits_for_its_backoff(store: TaskStore) -> None:
    store.accept(task("a1"), capacity=5)
    store.claim("a1", 0.0, 10.0)
    store.retry("a1", not_before=3.0)
    assert store.replayable(2.0, per_tenant=5) == []
    assert [c.id for c in store.replayable(3.0, per_tenant=5)] == ["a1"]


def test_the_first_answer_wins(store: TaskStore) -> None:
    store.accept(task("a1"), capacity=5)
    store.claim("a1", 0.0, 1.0)
    assert store.finish("a1", answer(b"first"))
    assert not store.finish("a1", answer(b"second"))
    view = store.lookup("a1", "acme")
    assert view is not None and view.state is TaskState.DONE
    assert view.result == answer(b"first")
    assert store.claim("a1", 100.0, 1.0) is None
    assert store.depth() == (0, None)


def test_only_the_tasks_own_tenant_can_read_it(store: TaskStore) -> None:
    store.accept(task("a1"), capacity=5)
    assert store.lookup("a1", "blue") is None
    assert store.lookup("nope", "acme") is None


def test_sweep_expires_old_tasks_and_drops_old_answers(store: TaskStore) -> None:
    store.accept(task("old", at=0.0), capacity=5)
    store.accept(task("done", at=50.0), capacity=5)
    store.accept(task("young", "blue", at=90.0), capacity=5)
    store.claim("done", 50.0, 1.0)
    store.finish("done", answer(b"x", at=51.0))
    swept = store.sweep(now=100.0, task_ttl_s=100.0, result_ttl_s=60.0)
    assert swept.expired == ("acme",) and swept.dropped == 0
    view = store.lookup("old", "acme")
    assert view is not None and view.state is TaskState.EXPIRED
    assert store.claim("old", 100.0, 1.0) is None
    swept = store.sweep(now=161.0, task_ttl_s=100.0, result_ttl_s=60.0)
    assert swept.dropped == 2  # "old" ended at 100, "done" at 51
    assert store.lookup("done", "acme") is None and store.lookup("old", "acme") is None
    assert store.depth() == (1, 90.0)


def test_replayable_takes_each_tenants_oldest_few(store: TaskStore) -> None:
    for i in range(5):
        store.accept(task(f"a{i}", at=float(i)), capacity=10)
    store.accept(task("b0", "blue", at=9.0), capacity=10)
    assert [c.id for c in store.replayable(10.0, per_tenant=2)] == ["a0", "a1", "b0"]


def test_tasks_waiting_out_a_backoff_do_not_hold_up_their_tenants_next(store: TaskStore) -> None:
    for i in range(5):
        store.accept(task(f"a{i}", at=float(i)), capacity=10)
    for early in ("a0", "a1"):
        store.claim(early, 5.0, 10.0)
        store.retry(early, not_before=100.0)
    assert [c.id for c in store.replayable(10.0, per_tenant=2)] == ["a2", "a3"]
    assert [c.id for c in store.replayable(100.0, per_tenant=2)] == ["a0", "a1"]


# ---- SQLite only -----------------------------------------------------------------------------


def test_a_stored_task_survives_the_process_and_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_accept_and_die, args=(str(path),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9  # os._exit right after the commit: no close, no checkpoint
    store = SqliteTaskStore(path)
    assert store.task("t1") == task("t1")
    store.close()


def _accept_and_die(path: str) -> None:
    import os

    SqliteTaskStore(Path(path)).accept(task("t1"), capacity=5)
    os._exit(9)


def test_the_store_is_private_fsynced_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_two_processes_claiming_one_task_have_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    a, b = SqliteTaskStore(path), SqliteTaskStore(path)  # two connections, as two processes have
    a.accept(task("t1"), capacity=5)
    assert [a.claim("t1", 0.0, 10.0) is not None, b.claim("t1", 0.0, 10.0) is not None].count(True) == 1
    assert b.finish("t1", answer(b"b")) and not a.finish("t1", answer(b"a"))
    a.close()
    b.close()


def test_a_broken_record_in_the_file_raises_rather_than_replaying_garbage(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    store.accept(task("t1"), capacity=5)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE tasks SET record = '{\"v\": 9}'")
    with pytest.raises(ValueError):
        store.task("t1")
    store.close()


def test_a_worker_gives_up_on_a_held_write_lock_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    worker = SqliteTaskStore(path, busy_timeout_s=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is mid-write
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        worker.accept(task("t1"), capacity=5)
    holder.execute("ROLLBACK")
    holder.close()
    assert worker.task("t1") is None
    assert worker.accept(task("t1"), capacity=5)  # and works once the lock is free
    worker.close()
