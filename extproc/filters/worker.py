"""What a processor may read of the worker process that runs it. The runtime's Sidecar is one;
tests use it too. Reads only: what a processor changes, it returns as effects."""

from __future__ import annotations

import random
from typing import Protocol

from ..core import Clock, Impact
from ..identity import KeyStore
from ..policy import Budget, Policy
from ..routing import HealthView
from ..routing.approval import Approvals
from ..routing.capacity import Denial, Holder
from ..routing.spend import OverBudget


class Worker(Protocol):
    policy: Policy  # the current revision: what decide decides under
    clock: Clock
    rng: random.Random
    probe_token: str
    # The client keys in force (replaced whole when the store file changes, never edited).
    key_store: KeyStore
    # Operators' approvals in force (replaced whole when the approvals file changes).
    approvals: Approvals

    def policy_for(self, stamp: str) -> Policy | None:
        """The revision a request was decided under (Policy.stamp), while the worker keeps it."""
        ...

    @property
    def auditing(self) -> bool:
        """Whether this worker writes an audit trail (its records are worth building)."""
        ...

    def key_for(self, provider: str) -> str | None:
        """The provider's API key, or None when it needs none."""
        ...

    def health_view(self, impact: Impact) -> HealthView | None:
        """The board's view for one impact class; None when the board is off."""
        ...

    def half_open(self, key: str) -> bool: ...

    def retries_allowed(self) -> bool: ...

    def baseline(self, key: str, stream: bool) -> float | None:
        """The p95 of a healthy answer's latency at the endpoint (TTFT for streams), if known."""
        ...

    def health_score(self, key: str) -> float | None:
        """The endpoint's degradation score (1.0 healthy), as the board has it; None when the
        board is off or has never heard of it."""
        ...

    def over_budget(self, tenant: str, budget: Budget | None) -> OverBudget | None:
        """Whether the tenant has spent its budget, across the fleet as far as the bus told."""
        ...

    def capacity(self, ladder: str, rung: int, holder: Holder) -> Denial | None:
        """Whether the rung takes one more request of the holder's now (None: yes)."""
        ...

    def held(self, tenant: str) -> int:
        """The tenant's requests held waiting for an approval, in the pod (routing/hold.py)."""
        ...

    def overloaded(self) -> bool:
        """Does the worker have policy.max_in_flight requests in flight? (decide sheds the next.)"""
        ...
