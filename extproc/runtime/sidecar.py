"""What every processor of one worker process shares: the serving policy, provider keys,
metrics, the clock, and the health board fed through the health bus."""

from __future__ import annotations

import logging
import os
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from ..core import Clock, Failure, Impact, SystemClock
from ..core.names import endpoint_key
from ..health.board import Board, Observation
from ..health.circuit import Transition
from ..policy import REQUESTED_MODEL, Policy, resolve_credentials
from ..routing.ladder import HealthView
from .bus import HealthBus, InProcessBus
from .metrics import Metrics

log = logging.getLogger("rungway.health")

# Set by `rungway up` for its workers: the shared secret that lets its probes pick a rung,
# and the pod-local health hub's Unix socket.
PROBE_TOKEN_ENV = "RUNGWAY_PROBE_TOKEN"
HUB_ENV = "RUNGWAY_HEALTH_HUB"
_REQUEST_COUNT_EVERY_S = 0.25


def configured_baselines(policy: Policy) -> dict[str, float]:
    """Latency baselines the policy states, by endpoint; a `$requested` rung's applies to
    every model it serves (`provider/*`)."""
    out: dict[str, float] = {}
    for rungs in policy.ladders.values():
        for rung in rungs:
            if rung.baseline_latency_s is not None:
                model = "*" if rung.model == REQUESTED_MODEL else rung.model
                out[endpoint_key(rung.provider, model)] = rung.baseline_latency_s
    return out


@dataclass
class Sidecar:
    policy: Policy
    keys: dict[str, SecretStr | None]
    metrics: Metrics
    clock: Clock = field(default_factory=SystemClock)
    bus: HealthBus = field(default_factory=InProcessBus)
    probe_token: str = field(default_factory=lambda: os.environ.get(PROBE_TOKEN_ENV) or secrets.token_hex(16))
    rng: random.Random = field(default_factory=random.Random)
    board: Board = field(init=False)
    _requests_unsent: int = field(default=0, init=False)
    _requests_sent_at: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self.board = Board(self.policy.health, configured_baselines(self.policy))
        self.bus.subscribe(self._on_event)

    @classmethod
    def start(
        cls, policy: Policy, metrics: Metrics, clock: Clock | None = None, bus: HealthBus | None = None
    ) -> Sidecar:
        return cls(policy, resolve_credentials(policy), metrics, clock or SystemClock(), bus or InProcessBus())

    # ---- events in -------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("origin") == self.bus.origin and event.get("k") == "obs":
            return  # applied already, as an object, by observe()
        for key, transition in self.board.apply(event, self.clock.wall()):
            self._announce(key, transition)
        self._publish_outbox()

    def _announce(self, key: str, t: Transition) -> None:
        # `rungway up` logs transitions once, from its own replica of the board.
        log.debug("circuit %s: %s → %s (%s)", key, t.source.value, t.target.value, t.reason)
        self.metrics.circuit_transitions.labels(key, t.target.value).inc()
        # Boards derive state from observations; this event is for dashboards and logs.
        self.bus.publish(
            {"k": "circuit", "key": key, "at": t.at, "from": t.source.value, "to": t.target.value, "reason": t.reason}
        )

    # ---- events out ------------------------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        for key, transition in self.board.observe(observation, self.clock.wall()):
            self._announce(key, transition)
        self.bus.publish(observation.to_event())
        self._publish_outbox()

    def _publish_outbox(self) -> None:
        for event in self.board.drain_outbox():
            self.bus.publish(event)

    def note_request(self) -> None:
        """Count a decided request for the fleet's retry budget; published in aggregate (every
        member of the bus decodes every event, so one event per request would not scale)."""
        self._requests_unsent += 1
        now = self.clock.wall()
        if now - self._requests_sent_at >= _REQUEST_COUNT_EVERY_S:
            self.bus.publish({"k": "req", "at": now, "count": self._requests_unsent})
            self._requests_unsent = 0
            self._requests_sent_at = now

    def report_quota(self, key: str, until: float) -> None:
        self.bus.publish(self.board.quota(key, until))

    # ---- what decide asks ------------------------------------------------------------------

    def health_view(self, impact: Impact) -> HealthView | None:
        if not self.policy.health.enabled:
            return None
        now = self.clock.wall()

        def view(key: str, first: bool) -> Failure | None:
            unusable = self.board.usable(key, impact, now, first=first)
            for transition in self.board.drain_transitions():
                self._announce(*transition)
            return unusable.reason if unusable is not None else None

        return view

    def retries_allowed(self) -> bool:
        return not self.policy.health.enabled or self.board.retries_allowed(self.clock.wall())
