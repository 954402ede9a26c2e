"""The deferral queue's storage: the `TaskStore` interface, its in-memory implementation
(deferral.TaskQueue, the reference) and the SQLite one every process of a pod shares.

A runtime/durable.py file: a commit is fsynced when it returns, so a worker that stored a task
and then answered 202 can be killed at any point after without losing it; a process killed
mid-transaction leaves no trace of it (WAL rollback). Each command's one transaction checks the
task's state against deferral's transition table, so two processes claiming or finishing the
same task serialise and exactly one wins. Calls block (fsync): the asyncio shells run them in a
thread.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from ..core import DeferredTask, TaskResult
from ..deferral import Candidate, Swept, TaskQueue, TaskState, TaskView, is_due, transition
from .durable import DurableFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    ended_at REAL NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    body BLOB NOT NULL,
    result TEXT,
    result_body BLOB
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, accepted_at);
CREATE INDEX IF NOT EXISTS tasks_by_tenant ON tasks (tenant, state);
"""
_PENDING = (TaskState.QUEUED.value, TaskState.RUNNING.value)


class TaskStore(Protocol):
    """What the workers (accept, lookup) and the drainer (the rest) need of a store. The
    contract suite (tests/runtime/test_tasks.py) runs over every implementation."""

    def accept(self, task: DeferredTask, capacity: int) -> bool: ...
    def claim(self, task_id: str, now: float, lease_s: float) -> DeferredTask | None: ...
    def retry(self, task_id: str, not_before: float) -> None: ...
    def finish(self, task_id: str, result: TaskResult) -> bool: ...
    def sweep(self, now: float, task_ttl_s: float, result_ttl_s: float) -> Swept: ...
    def pending(self, tenant: str) -> int: ...
    def replayable(self, now: float, per_tenant: int) -> list[Candidate]: ...
    def task(self, task_id: str) -> DeferredTask | None: ...
    def lookup(self, task_id: str, tenant: str) -> TaskView | None: ...
    def depth(self) -> tuple[int, float | None]: ...


MemoryTaskStore = TaskQueue  # the in-memory implementation is the pure reference itself


class SqliteTaskStore:
    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        """`busy_timeout_s`: how long a command waits for another process's write lock before
        it fails (sqlite3.OperationalError). A worker answering a client keeps it well under
        Envoy's ext_proc message timeout: a 503 it chose beats a timeout, and a failed write
        leaves nothing behind."""
        self._file = DurableFile(path, _SCHEMA, busy_timeout_s)
        self._db, self._lock = self._file.db, self._file.lock

    def close(self) -> None:
        self._file.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.write()

    def _state(self, db: sqlite3.Connection, task_id: str) -> tuple[TaskState, float, float] | None:
        row = db.execute("SELECT state, not_before, lease_until FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return (TaskState(row[0]), row[1], row[2]) if row is not None else None

    # ---- commands ----------------------------------------------------------------------------

    def accept(self, task: DeferredTask, capacity: int) -> bool:
        with self._write() as db:
            if db.execute("SELECT 1 FROM tasks WHERE id = ?", (task.id,)).fetchone() is not None:
                return True
            waiting = db.execute(
                "SELECT count(*) FROM tasks WHERE tenant = ? AND state IN (?, ?)", (task.tenant, *_PENDING)
            ).fetchone()[0]
            if waiting >= capacity:
                return False
            db.execute(
                "INSERT INTO tasks (id, tenant, state, accepted_at, record, body) VALUES (?, ?, ?, ?, ?, ?)",
                (task.id, task.tenant, TaskState.QUEUED.value, task.accepted_at, task.encode(), task.body),
            )
            return True

    def claim(self, task_id: str, now: float, lease_s: float) -> DeferredTask | None:
        with self._write() as db:
            found = self._state(db, task_id)
            if found is None or not is_due(*found, now):
                return None
            target = transition(found[0], TaskState.RUNNING)
            db.execute(
                "UPDATE tasks SET state = ?, attempts = attempts + 1, lease_until = ? WHERE id = ?",
                (target.value, now + lease_s, task_id),
            )
            row = db.execute("SELECT record, body FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return DeferredTask.decode(row[0], row[1])

    def retry(self, task_id: str, not_before: float) -> None:
        with self._write() as db:
            found = self._state(db, task_id)
            if found is not None and found[0] is TaskState.RUNNING:
                target = transition(found[0], TaskState.QUEUED)
                db.execute(
                    "UPDATE tasks SET state = ?, not_before = ? WHERE id = ?", (target.value, not_before, task_id)
                )

    def finish(self, task_id: str, result: TaskResult) -> bool:
        with self._write() as db:
            found = self._state(db, task_id)
            if found is None or found[0].value not in _PENDING:
                return False
            target = transition(found[0], TaskState.DONE)
            db.execute(
                "UPDATE tasks SET state = ?, ended_at = ?, result = ?, result_body = ?, body = x'' WHERE id = ?",
                (target.value, result.finished_at, result.encode(), result.body, task_id),
            )
            return True

    def sweep(self, now: float, task_ttl_s: float, result_ttl_s: float) -> Swept:
        with self._write() as db:
            expired = [
                row[0]
                for row in db.execute(
                    "SELECT tenant FROM tasks WHERE state IN (?, ?) AND accepted_at <= ?", (*_PENDING, now - task_ttl_s)
                )
            ]
            db.execute(
                "UPDATE tasks SET state = ?, ended_at = ?, body = x'' WHERE state IN (?, ?) AND accepted_at <= ?",
                (TaskState.EXPIRED.value, now, *_PENDING, now - task_ttl_s),
            )
            held = [
                row[0]
                for row in db.execute(
                    "SELECT tenant FROM tasks WHERE state = ? AND accepted_at <= ?",
                    (TaskState.ESCALATED.value, now - task_ttl_s),
                )
            ]
            # An escalated task no one decided on (E2) keeps its body: the escalation shows it.
            db.execute(
                "UPDATE tasks SET state = ?, ended_at = ? WHERE state = ? AND accepted_at <= ?",
                (TaskState.EXPIRED.value, now, TaskState.ESCALATED.value, now - task_ttl_s),
            )
            dropped = db.execute(
                "DELETE FROM tasks WHERE state IN (?, ?) AND ended_at <= ?",
                (TaskState.DONE.value, TaskState.EXPIRED.value, now - result_ttl_s),
            ).rowcount
        return Swept(tuple(expired), dropped, tuple(held))

    # ---- queries -----------------------------------------------------------------------------

    def pending(self, tenant: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM tasks WHERE tenant = ? AND state IN (?, ?)", (tenant, *_PENDING)
            ).fetchone()
        return int(row[0])

    def replayable(self, now: float, per_tenant: int) -> list[Candidate]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, tenant, accepted_at FROM ("
                " SELECT id, tenant, accepted_at,"
                "  row_number() OVER (PARTITION BY tenant ORDER BY accepted_at, id) AS n FROM tasks"
                "  WHERE (state = ? AND not_before <= ?) OR (state = ? AND lease_until <= ?)"
                ") WHERE n <= ? ORDER BY accepted_at, id",
                (TaskState.QUEUED.value, now, TaskState.RUNNING.value, now, per_tenant),
            ).fetchall()
        return [Candidate(r[0], r[1], r[2]) for r in rows]

    def task(self, task_id: str) -> DeferredTask | None:
        with self._lock:
            row = self._db.execute("SELECT record, body FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return DeferredTask.decode(row[0], row[1]) if row is not None else None

    def lookup(self, task_id: str, tenant: str) -> TaskView | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, accepted_at, attempts, result, result_body FROM tasks WHERE id = ? AND tenant = ?",
                (task_id, tenant),
            ).fetchone()
        if row is None:
            return None
        result = TaskResult.decode(row[3], row[4]) if row[3] is not None else None
        return TaskView(task_id, tenant, TaskState(row[0]), row[1], row[2], result)

    def depth(self) -> tuple[int, float | None]:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*), min(accepted_at) FROM tasks WHERE state IN (?, ?)", _PENDING
            ).fetchone()
        return int(row[0]), row[1]
