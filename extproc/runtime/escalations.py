"""Escalated requests' storage (E2): the `EscalationStore` interface, its in-memory
implementation (over the deferral queue's reference, deferral.TaskQueue) and the SQLite one,
in the deferral store's own file.

An escalation is a task (tasks table, state ESCALATED: the client polls it like a deferred one)
plus a row of its own: the Escalation record, the candidate answer, a person's Resolution and
whether the on-call's webhook was delivered. Its state is derived, never stored twice: the
resolution's when there is one, EXPIRED once its task expired (or was dropped), else OPEN.
Resolving is one transaction over both rows, checked against the lifecycle's transition table,
so two people deciding at once cannot both win.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..audit import Entry
from ..core import DeferredTask, Escalation, Resolution, Review, TaskResult
from ..core.names import ESCALATION_HEADER, TASK_ID_HEADER
from ..deferral import TaskQueue, TaskState
from ..deferral import transition as task_transition
from ..escalation import EscalationState, resolved_state
from ..escalation import transition as escalation_transition
from ..filters.escalation import event_body, reviewed
from ..policy import EscalationSettings, Policy
from .durable import DurableFile
from .tasks import SqliteTaskStore
from .webhook import deliver

log = logging.getLogger("rungway.escalation")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    at REAL NOT NULL,
    record TEXT NOT NULL,
    candidate TEXT,
    candidate_body BLOB,
    resolution TEXT,
    notified INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS escalations_by_tenant ON escalations (tenant, at);
"""


@dataclass(frozen=True, slots=True)
class EscalationView:
    escalation: Escalation
    task: DeferredTask  # the suspended request (conversation, tools, tool results it carried)
    state: EscalationState
    candidate: TaskResult | None
    resolution: Resolution | None
    notified: bool


class NoSuchEscalationError(KeyError):
    pass


class EscalationStore(Protocol):
    """What the workers (escalate) and the supervisor (the rest) need. The contract suite
    (tests/runtime/test_escalations.py) runs over every implementation."""

    def escalate(self, task: DeferredTask, escalation: Escalation, candidate: TaskResult | None) -> None: ...
    def escalation(self, task_id: str) -> EscalationView | None: ...
    def escalations(self, tenant: str | None = None, *, open_only: bool = False) -> list[EscalationView]: ...
    def resolve(self, task_id: str, resolution: Resolution, answer: TaskResult | None) -> EscalationView: ...
    def unnotified(self, limit: int) -> list[EscalationView]: ...
    def mark_notified(self, task_id: str) -> None: ...


def _state(task_state: TaskState | None, resolution: Resolution | None) -> EscalationState:
    if resolution is not None:
        return resolved_state(resolution.action)
    if task_state is TaskState.ESCALATED:
        return EscalationState.OPEN
    return EscalationState.EXPIRED


def released(task: DeferredTask, resolution: Resolution) -> DeferredTask:
    """The task's record once a person sent it on: reviewed (never escalated again), pinned to
    the redirect's rung."""
    return replace(task, reviewed=True, pin=resolution.rung)


@dataclass(slots=True)
class _Row:
    escalation: Escalation
    candidate: TaskResult | None
    resolution: Resolution | None = None
    notified: bool = False


@dataclass
class MemoryEscalations:
    """The in-memory store: the reference for the SQLite one (and a sidecar's without a file)."""

    queue: TaskQueue = field(default_factory=TaskQueue)
    _rows: dict[str, _Row] = field(default_factory=dict)

    def escalate(self, task: DeferredTask, escalation: Escalation, candidate: TaskResult | None) -> None:
        if task.id in self._rows:
            return
        self.queue.hold(task)
        self._rows[task.id] = _Row(escalation, candidate)

    def _view(self, task_id: str) -> EscalationView | None:
        row = self._rows.get(task_id)
        task = self.queue.task(task_id)
        if row is None or task is None:
            return None
        entry = self.queue.lookup(task_id, task.tenant)
        state = _state(entry.state if entry is not None else None, row.resolution)
        return EscalationView(row.escalation, task, state, row.candidate, row.resolution, row.notified)

    def escalation(self, task_id: str) -> EscalationView | None:
        return self._view(task_id)

    def escalations(self, tenant: str | None = None, *, open_only: bool = False) -> list[EscalationView]:
        views = [v for i in self._rows if (v := self._view(i)) is not None]
        views = [v for v in views if tenant is None or v.escalation.tenant == tenant]
        views = [v for v in views if not open_only or v.state is EscalationState.OPEN]
        return sorted(views, key=lambda v: (v.escalation.at, v.escalation.id))

    def resolve(self, task_id: str, resolution: Resolution, answer: TaskResult | None) -> EscalationView:
        view = self._view(task_id)
        if view is None:
            raise NoSuchEscalationError(task_id)
        escalation_transition(view.state, resolved_state(resolution.action))
        if answer is not None:
            self.queue.close(task_id, answer)
        else:
            self.queue.release(released(view.task, resolution))
        self._rows[task_id].resolution = resolution
        resolved = self._view(task_id)
        assert resolved is not None
        return resolved

    def unnotified(self, limit: int) -> list[EscalationView]:
        views = [v for v in self.escalations() if not v.notified]
        return views[:limit]

    def mark_notified(self, task_id: str) -> None:
        if task_id in self._rows:
            self._rows[task_id].notified = True


class SqliteEscalations:
    """The escalations table beside the tasks table, in the deferral store's file (its own
    connection; every command one BEGIN IMMEDIATE transaction, fsynced like the tasks')."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        SqliteTaskStore(path, busy_timeout_s).close()  # the file, its mode and the tasks table
        self._file = DurableFile(path, _SCHEMA, busy_timeout_s)
        self._db, self._lock = self._file.db, self._file.lock

    def close(self) -> None:
        self._file.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.write()

    def escalate(self, task: DeferredTask, escalation: Escalation, candidate: TaskResult | None) -> None:
        with self._write() as db:
            if db.execute("SELECT 1 FROM escalations WHERE id = ?", (task.id,)).fetchone() is not None:
                return
            db.execute(
                "INSERT INTO tasks (id, tenant, state, accepted_at, record, body) VALUES (?, ?, ?, ?, ?, ?)",
                (task.id, task.tenant, TaskState.ESCALATED.value, task.accepted_at, task.encode(), task.body),
            )
            db.execute(
                "INSERT INTO escalations (id, tenant, at, record, candidate, candidate_body) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    task.id,
                    task.tenant,
                    escalation.at,
                    escalation.encode(),
                    candidate.encode() if candidate is not None else None,
                    candidate.body if candidate is not None else None,
                ),
            )

    _SELECT = (
        "SELECT e.record, e.candidate, e.candidate_body, e.resolution, e.notified, t.state, t.record, t.body"
        " FROM escalations e JOIN tasks t ON t.id = e.id"
    )

    @staticmethod
    def _decode(row: tuple[str, str | None, bytes | None, str | None, int, str, str, bytes]) -> EscalationView:
        record, candidate, candidate_body, resolution, notified, task_state, task_record, body = row
        decided = Resolution.decode(resolution) if resolution is not None else None
        return EscalationView(
            Escalation.decode(record),
            DeferredTask.decode(task_record, body),
            _state(TaskState(task_state), decided),
            TaskResult.decode(candidate, candidate_body or b"") if candidate is not None else None,
            decided,
            bool(notified),
        )

    def escalation(self, task_id: str) -> EscalationView | None:
        with self._lock:
            row = self._db.execute(self._SELECT + " WHERE e.id = ?", (task_id,)).fetchone()
        return self._decode(row) if row is not None else None

    def escalations(self, tenant: str | None = None, *, open_only: bool = False) -> list[EscalationView]:
        where, args = [], []
        if tenant is not None:
            where.append("e.tenant = ?")
            args.append(tenant)
        if open_only:
            where.append("t.state = ? AND e.resolution IS NULL")
            args.append(TaskState.ESCALATED.value)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._lock:
            rows = self._db.execute(self._SELECT + clause + " ORDER BY e.at, e.id", args).fetchall()
        return [self._decode(r) for r in rows]

    def resolve(self, task_id: str, resolution: Resolution, answer: TaskResult | None) -> EscalationView:
        with self._write() as db:
            row = db.execute(self._SELECT + " WHERE e.id = ?", (task_id,)).fetchone()
            if row is None:
                raise NoSuchEscalationError(task_id)
            view = self._decode(row)
            escalation_transition(view.state, resolved_state(resolution.action))
            if answer is not None:
                target = task_transition(TaskState.ESCALATED, TaskState.DONE)
                db.execute(
                    "UPDATE tasks SET state = ?, ended_at = ?, result = ?, result_body = ? WHERE id = ?",
                    (target.value, answer.finished_at, answer.encode(), answer.body, task_id),
                )
            else:
                target = task_transition(TaskState.ESCALATED, TaskState.QUEUED)
                db.execute(
                    "UPDATE tasks SET state = ?, record = ?, not_before = 0 WHERE id = ?",
                    (target.value, released(view.task, resolution).encode(), task_id),
                )
            db.execute("UPDATE escalations SET resolution = ? WHERE id = ?", (resolution.encode(), task_id))
            row = db.execute(self._SELECT + " WHERE e.id = ?", (task_id,)).fetchone()
        return self._decode(row)

    def unnotified(self, limit: int) -> list[EscalationView]:
        with self._lock:
            rows = self._db.execute(
                self._SELECT + " WHERE e.notified = 0 ORDER BY e.at, e.id LIMIT ?", (limit,)
            ).fetchall()
        return [self._decode(r) for r in rows]

    def mark_notified(self, task_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE escalations SET notified = 1 WHERE id = ?", (task_id,))


class Desk:
    """`rungway up`'s side of escalation, one per pod: tells the on-call of every escalation (a
    signed webhook, retried with backoff until delivered or decided; at-least-once: a restart
    tells again what was not marked delivered), and takes people's decisions from the admin API
    (stored, audited, counted)."""

    def __init__(
        self,
        store: EscalationStore,
        policy: Callable[[], Policy],
        audit: Callable[[Entry], None] | None = None,
        *,
        every_s: float = 0.5,
        retry_after_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self._policy = policy
        self._audit = audit
        self._every_s = every_s
        self._retry_after_s = retry_after_s
        self._rng = rng or random.Random()
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._not_before: dict[str, float] = {}
        self.decisions: dict[tuple[str, str], int] = {}  # (tenant, outcome) → count
        self.webhooks: dict[str, int] = {}  # outcome → count

    # ---- webhooks ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.pass_once()
                except Exception:  # a locked or broken store: the next pass tries again
                    log.exception("escalation webhook pass failed")
                await asyncio.sleep(self._every_s)
        finally:
            for job in self._sending.values():
                job.cancel()

    async def pass_once(self) -> None:
        settings = self._policy().escalation
        if settings is None:
            return
        now = time.time()
        for view in await asyncio.to_thread(self.store.unnotified, 64):
            task_id = view.escalation.id
            if task_id in self._sending or self._not_before.get(task_id, 0.0) > now:
                continue
            if view.state is not EscalationState.OPEN:
                await asyncio.to_thread(self.store.mark_notified, task_id)  # decided or expired meanwhile
                continue
            job = asyncio.create_task(self._notify(view, settings.webhook_url, settings))
            self._sending[task_id] = job

    async def _notify(self, view: EscalationView, url: str, settings: EscalationSettings) -> None:
        task_id = view.escalation.id
        try:
            payload = event_body(view.escalation, view.task, view.candidate)
            secret = settings.secret.resolve().get_secret_value()
            headers = {TASK_ID_HEADER: task_id, ESCALATION_HEADER: "escalated"}
            if await deliver(url, payload, secret, attempts=settings.webhook_attempts, rng=self._rng, headers=headers):
                await asyncio.to_thread(self.store.mark_notified, task_id)
                self._count_webhook("delivered")
            else:
                self._not_before[task_id] = time.time() + self._retry_after_s
                self._count_webhook("failed")
                log.warning("escalation %s: webhook failed %d times", task_id, settings.webhook_attempts)
        except Exception:
            self._not_before[task_id] = time.time() + self._retry_after_s
            log.exception("escalation %s: webhook failed", task_id)
        finally:
            self._sending.pop(task_id, None)

    def _count_webhook(self, outcome: str) -> None:
        self.webhooks[outcome] = self.webhooks.get(outcome, 0) + 1

    # ---- decisions ---------------------------------------------------------------------------

    def decide(self, task_id: str, review: Review, *, by: str, reason: str, rung: object) -> EscalationView:
        """A person's decision (blocking: run it in a thread). Raises NoSuchEscalationError,
        ReviewError (a bad decision) or IllegalEscalationError (decided already, or expired)."""
        view = self.store.escalation(task_id)
        if view is None:
            raise NoSuchEscalationError(task_id)
        resolution, answer, entry = reviewed(
            self._policy(),
            view.escalation,
            view.task,
            view.candidate,
            review,
            by=by,
            reason=reason,
            rung=rung,
            now=time.time(),
        )
        decided = self.store.resolve(task_id, resolution, answer)
        if self._audit is not None:
            self._audit(entry)
        key = (view.escalation.tenant, decided.state.value)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        log.info("escalation %s %s by %s", task_id, decided.state.value, by)
        return decided

    def collector(self) -> EscalationCollector:
        return EscalationCollector(self.store, self)


def view_json(view: EscalationView, *, full: bool) -> dict[str, Any]:
    """An escalation for the admin API and the CLI: the record, its state and decision; `full`
    adds the request as the client sent it and the candidate answer."""
    out: dict[str, Any] = {
        **view.escalation.to_json(),
        "state": view.state.value,
        "resolution": view.resolution.to_json() if view.resolution is not None else None,
        "notified": view.notified,
    }
    if full:
        out.update(json.loads(event_body(view.escalation, view.task, view.candidate)))
        out.pop("event", None)
    return out


class EscalationCollector(Collector):
    """Open escalations (read from the store at scrape time), decisions and webhooks."""

    def __init__(self, store: EscalationStore, desk: Desk) -> None:
        self._store = store
        self._desk = desk

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "rungway_escalations_open", "Escalated requests waiting for a person's decision.",
            len(self._store.escalations(open_only=True)),
        )  # fmt: skip
        decisions = CounterMetricFamily(
            "rungway_escalation_decisions",
            "People's decisions on escalated requests: approved, redirected, rejected.",
            labels=["tenant", "outcome"],
        )
        for (tenant, outcome), n in sorted(self._desk.decisions.items()):
            decisions.add_metric([tenant, outcome], n)
        yield decisions
        webhooks = CounterMetricFamily(
            "rungway_escalation_webhooks",
            "On-call webhooks of escalations: delivered, failed (all attempts; retried later).",
            labels=["outcome"],
        )
        for outcome, n in sorted(self._desk.webhooks.items()):
            webhooks.add_metric([outcome], n)
        yield webhooks
