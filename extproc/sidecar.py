"""What every processor of one worker process shares: the serving policy, provider keys,
metrics and the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import SecretStr

from .clock import Clock, SystemClock
from .metrics import Metrics
from .policy import Policy, resolve_credentials


@dataclass
class Sidecar:
    policy: Policy
    keys: dict[str, SecretStr | None]
    metrics: Metrics
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def start(cls, policy: Policy, metrics: Metrics, clock: Clock | None = None) -> Sidecar:
        return cls(policy, resolve_credentials(policy), metrics, clock or SystemClock())
