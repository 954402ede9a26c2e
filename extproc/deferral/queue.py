"""The deferral queue's rules, and an in-memory queue that follows them.

Theory of operation. A task is QUEUED when accepted (stored before the client gets its 202).
The pod's drainer claims due tasks in per-tenant fair order: a claim makes the task RUNNING
with a lease. The replay's answer either finishes it (DONE, the result kept `result_ttl_s`)
or sends it back to QUEUED with a backoff. A drainer that dies mid-replay leaves a RUNNING
task whose lease lapses: it is due again (at-least-once). A finish is idempotent by task id:
the first result wins, a late duplicate replay's result is ignored. A task not answered within
`task_ttl_s` of its acceptance is EXPIRED (kept `result_ttl_s` so its client learns so); DONE
and EXPIRED tasks are dropped after `result_ttl_s`. Capacity counts a tenant's QUEUED and
RUNNING tasks only.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ..core import DeferredTask, TaskResult


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    EXPIRED = "expired"
    # Suspended for a person's decision (E2, escalation/): never replayed, never counted
    # against the tenant's deferral capacity, expired by the same task TTL.
    ESCALATED = "escalated"


TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        (TaskState.QUEUED, TaskState.RUNNING),  # claimed by the drainer
        (TaskState.RUNNING, TaskState.RUNNING),  # its lease lapsed: claimed again
        (TaskState.RUNNING, TaskState.QUEUED),  # the replay was not served: back, with a backoff
        (TaskState.RUNNING, TaskState.DONE),  # the replay's answer
        (TaskState.QUEUED, TaskState.DONE),  # a lapsed lease's replay answered after all
        (TaskState.QUEUED, TaskState.EXPIRED),
        (TaskState.RUNNING, TaskState.EXPIRED),
        (TaskState.ESCALATED, TaskState.DONE),  # approved with its candidate answer, or rejected
        (TaskState.ESCALATED, TaskState.QUEUED),  # approved without one, or redirected: replayed
        (TaskState.ESCALATED, TaskState.EXPIRED),  # no one decided in time
    }
)
PENDING = frozenset({TaskState.QUEUED, TaskState.RUNNING})
WAITING = PENDING | {TaskState.ESCALATED}  # not answered yet: expired after the task TTL


class IllegalTransitionError(ValueError):
    pass


def transition(source: TaskState, target: TaskState) -> TaskState:
    if (source, target) not in TRANSITIONS:
        raise IllegalTransitionError(f"a deferred task cannot go from {source.value} to {target.value}")
    return target


@dataclass(frozen=True, slots=True)
class Candidate:
    """What fairness and due-ness need of a task (its body stays in the store)."""

    id: str
    tenant: str
    accepted_at: float


def fair_order(candidates: Iterable[Candidate], last_served: Mapping[str, float] | None = None) -> list[Candidate]:
    """Round robin over tenants, each tenant's oldest first. Tenants go in order of when they
    were last served (`last_served`: tenant → when its last replay started; never served goes
    first), then of their oldest task: across passes too, a tenant with a thousand tasks waiting
    delays another's next one by one replay."""
    served = last_served or {}
    by_tenant: dict[str, list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: (c.accepted_at, c.id)):
        by_tenant.setdefault(c.tenant, []).append(c)
    queues = sorted(by_tenant.values(), key=lambda q: (served.get(q[0].tenant, float("-inf")), q[0].accepted_at))
    out: list[Candidate] = []
    depth = 0
    total = sum(len(q) for q in queues)
    while len(out) < total:
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out


class Verdict(StrEnum):
    DONE = "done"  # the client's answer: keep it
    RETRY = "retry"  # no rung served it (yet): replay later


def replay_verdict(status: int, served_by: str = "") -> Verdict:
    """A success and a client error are answers (the request itself is what it is); a 429 or
    any 5xx means no rung could serve it now. A 401 means Rungway could not vouch for the
    replay (a restarted pod's new secret): replayed again. A success Rungway made up itself
    (a task class's `when_exhausted` stand-in, served by `rungway/...`) is not the model's
    answer the task waits for: replayed again."""
    if status in (401, 408, 429) or status >= 500:
        return Verdict.RETRY
    if 200 <= status < 300 and served_by.startswith("rungway"):
        return Verdict.RETRY
    return Verdict.DONE


def retry_delay(attempts: int, rng: random.Random, base_s: float = 1.0, cap_s: float = 60.0) -> float:
    """Exponential backoff with full jitter (at least half the step), by replays so far."""
    step = min(cap_s, base_s * float(2 ** min(max(attempts - 1, 0), 16)))
    return step / 2 + rng.random() * step / 2


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the task's client may read."""

    id: str
    tenant: str
    state: TaskState
    accepted_at: float
    attempts: int
    result: TaskResult | None


@dataclass(frozen=True, slots=True)
class Swept:
    expired: tuple[str, ...]  # tenants of the tasks that expired, one entry per task
    dropped: int  # DONE / EXPIRED tasks past their result TTL, gone
    escalations_expired: tuple[str, ...] = ()  # tenants of escalated tasks no one decided on in time


@dataclass(slots=True)
class _Entry:
    task: DeferredTask
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    lease_until: float = 0.0
    not_before: float = 0.0
    result: TaskResult | None = None
    ended_at: float = 0.0


@dataclass
class TaskQueue:
    """The in-memory queue: the reference implementation of the store contract (and the store
    of a sidecar that runs without a store file in tests). Time is passed in."""

    _entries: dict[str, _Entry] = field(default_factory=dict)

    # ---- commands ----------------------------------------------------------------------------

    def accept(self, task: DeferredTask, capacity: int) -> bool:
        """Stored, or False when the tenant already has `capacity` tasks pending. Accepting an
        id twice keeps the first."""
        if task.id in self._entries:
            return True
        if self.pending(task.tenant) >= capacity:
            return False
        self._entries[task.id] = _Entry(task)
        return True

    def claim(self, task_id: str, now: float, lease_s: float) -> DeferredTask | None:
        """The task, now RUNNING under a lease, or None when it is not due (claimed elsewhere,
        answered, expired)."""
        e = self._entries.get(task_id)
        if e is None or not is_due(e.state, e.not_before, e.lease_until, now):
            return None
        e.state = transition(e.state, TaskState.RUNNING)
        e.attempts += 1
        e.lease_until = now + lease_s
        return e.task

    def retry(self, task_id: str, not_before: float) -> None:
        e = self._entries.get(task_id)
        if e is not None and e.state is TaskState.RUNNING:
            e.state = transition(e.state, TaskState.QUEUED)
            e.not_before = not_before

    def finish(self, task_id: str, result: TaskResult) -> bool:
        """True when this result is the task's answer; False for a duplicate (first wins)."""
        e = self._entries.get(task_id)
        if e is None or e.state not in PENDING:
            return False
        e.state = transition(e.state, TaskState.DONE)
        e.result = result
        e.ended_at = result.finished_at
        return True

    def hold(self, task: DeferredTask) -> None:
        """Stored ESCALATED (E2): waits for a person, outside the tenant's deferral capacity.
        Holding an id twice keeps the first."""
        self._entries.setdefault(task.id, _Entry(task, state=TaskState.ESCALATED))

    def release(self, task: DeferredTask) -> bool:
        """An escalated task a person sent on (approved without a candidate, redirected): QUEUED
        for a replay with `task`'s record (reviewed, perhaps pinned). False unless ESCALATED."""
        e = self._entries.get(task.id)
        if e is None or e.state is not TaskState.ESCALATED:
            return False
        e.state = transition(e.state, TaskState.QUEUED)
        e.task = task
        return True

    def close(self, task_id: str, result: TaskResult) -> bool:
        """An escalated task a person answered (its candidate approved, or rejected): DONE."""
        e = self._entries.get(task_id)
        if e is None or e.state is not TaskState.ESCALATED:
            return False
        e.state = transition(e.state, TaskState.DONE)
        e.result = result
        e.ended_at = result.finished_at
        return True

    def sweep(self, now: float, task_ttl_s: float, result_ttl_s: float) -> Swept:
        expired: list[str] = []
        held: list[str] = []
        gone: list[str] = []
        for task_id, e in self._entries.items():
            if e.state in WAITING and now - e.task.accepted_at >= task_ttl_s:
                (held if e.state is TaskState.ESCALATED else expired).append(e.task.tenant)
                e.state = transition(e.state, TaskState.EXPIRED)
                e.ended_at = now
            elif e.state not in WAITING and now - e.ended_at >= result_ttl_s:
                gone.append(task_id)
        for task_id in gone:
            del self._entries[task_id]
        return Swept(tuple(expired), len(gone), tuple(held))

    # ---- queries -----------------------------------------------------------------------------

    def pending(self, tenant: str) -> int:
        return sum(1 for e in self._entries.values() if e.task.tenant == tenant and e.state in PENDING)

    def replayable(self, now: float, per_tenant: int) -> list[Candidate]:
        """Due tasks, at most `per_tenant` of each tenant (its oldest), oldest first."""
        found = sorted(
            (
                Candidate(e.task.id, e.task.tenant, e.task.accepted_at)
                for e in self._entries.values()
                if is_due(e.state, e.not_before, e.lease_until, now)
            ),
            key=lambda c: (c.accepted_at, c.id),
        )
        taken: dict[str, int] = {}
        out = []
        for c in found:
            if taken.get(c.tenant, 0) < per_tenant:
                taken[c.tenant] = taken.get(c.tenant, 0) + 1
                out.append(c)
        return out

    def task(self, task_id: str) -> DeferredTask | None:
        e = self._entries.get(task_id)
        return e.task if e is not None else None

    def lookup(self, task_id: str, tenant: str) -> TaskView | None:
        """The tenant's own task, or None (another tenant's task does not exist for it)."""
        e = self._entries.get(task_id)
        if e is None or e.task.tenant != tenant:
            return None
        return TaskView(e.task.id, e.task.tenant, e.state, e.task.accepted_at, e.attempts, e.result)

    def depth(self) -> tuple[int, float | None]:
        """Tasks pending, and when the oldest of them was accepted."""
        times = [e.task.accepted_at for e in self._entries.values() if e.state in PENDING]
        return len(times), min(times, default=None)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            task_id: {"tenant": e.task.tenant, "state": e.state.value, "attempts": e.attempts}
            for task_id, e in sorted(self._entries.items())
        }


def is_due(state: TaskState, not_before: float, lease_until: float, now: float) -> bool:
    if state is TaskState.QUEUED:
        return not_before <= now
    return state is TaskState.RUNNING and lease_until <= now
