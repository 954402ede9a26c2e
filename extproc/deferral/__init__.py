"""Deferral (E1): requests accepted now (202 + task id) and replayed when a permitted rung is
healthy again (pure).

Owns: a task's lifecycle (`TaskState` and its transition table), the in-memory `TaskQueue`
(the reference every store implements: capacity per tenant, leases, results with a TTL, first
result wins), per-tenant fair draining order, what a replay's answer means (done or try again,
with backoff), and whether the health view lets a task be replayed now. May import: core,
policy, routing.
"""

from .queue import (
    Candidate,
    IllegalTransitionError,
    Swept,
    TaskQueue,
    TaskState,
    TaskView,
    Verdict,
    fair_order,
    is_due,
    replay_verdict,
    retry_delay,
    transition,
)
from .rules import deferrable, may_wait, servable

__all__ = [
    "Candidate",
    "IllegalTransitionError",
    "Swept",
    "TaskQueue",
    "TaskState",
    "TaskView",
    "Verdict",
    "deferrable",
    "fair_order",
    "is_due",
    "may_wait",
    "replay_verdict",
    "retry_delay",
    "servable",
    "transition",
]
