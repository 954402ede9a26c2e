"""Prometheus metrics (A3, first cut): what the processors observe, with bounded label sets.

Workers started by `rungway up` share one registry through prometheus-client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR), so the supervisor's /metrics shows the whole sidecar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..health.board import Board

# Tenant names come from a request header: past this many distinct ones per process, further
# tenants are counted as "other" so a noisy or hostile client cannot blow up the label sets.
MAX_TENANT_LABELS = 200


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._tenants: set[str] = set()
        kw = {"registry": registry} if registry is not None else {}
        self.decisions = Counter(
            "rungway_decisions_total",
            "Requests decided by the sidecar, by outcome (routed, refused, invalid).",
            ["tenant", "task", "ladder", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.attempts = Counter(
            "rungway_attempts_total",
            "Tries on a rung, by outcome (served, hop, failed, propagated).",
            ["ladder", "rung", "provider", "model", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.trips = Counter(
            "rungway_trips_total",
            "Failed tries, by failure class.",
            ["ladder", "rung", "provider", "model", "reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.served = Counter(
            "rungway_served_total",
            "Answers delivered to clients, by tier and whether degraded.",
            ["tenant", "task", "ladder", "tier", "degraded"],
            **kw,  # type: ignore[arg-type]
        )
        self.streams = Counter(
            "rungway_streams_total",
            "Streamed answers by how they ended (complete, finalised, interrupted, cut).",
            ["outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.circuit_transitions = Counter(
            "rungway_circuit_transitions_total",
            "Circuit state changes seen by this process, by endpoint and new state.",
            ["endpoint", "state"],
            **kw,  # type: ignore[arg-type]
        )
        self.tries_refused = Counter(
            "rungway_tries_refused_total",
            "Tries the attempt filter would not serve (e.g. decided under another policy), by reason.",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.bus_rejected = Counter(
            "rungway_bus_events_rejected_total",
            "Health-bus frames (or single events) that changed nothing, by reason: signature, stale, "
            "replayed, size, malformed.",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.unauthenticated = Counter(
            "rungway_unauthenticated_total",
            "Requests refused with 401 before any provider was called, by reason.",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.channel_refused = Counter(
            "rungway_channel_refused_total",
            "ext_proc streams refused for not carrying Envoy's channel token.",
            **kw,  # type: ignore[arg-type]
        )
        self.key_store_reloads = Counter(
            "rungway_key_store_reloads_total",
            "Times a changed client key store was taken without a restart.",
            **kw,  # type: ignore[arg-type]
        )
        self.sidecar_errors = Counter(
            "rungway_sidecar_errors_total",
            "Exceptions inside the sidecar that were answered with an error instead of a crash.",
            ["filter"],
            **kw,  # type: ignore[arg-type]
        )

    def tenant(self, name: str) -> str:
        """The label for a tenant: its name, or "other" once the label budget is spent."""
        if name in self._tenants:
            return name
        if len(self._tenants) < MAX_TENANT_LABELS:
            self._tenants.add(name)
            return name
        return "other"


class ProbeMetrics:
    """The prober's own counters (the supervisor's process; probes are never tenant traffic).
    Labels are bounded: endpoints by the probe targets, outcomes by the failure classes."""

    def __init__(self) -> None:
        # Registered into each scrape's registry by the supervisor, next to the workers' metrics.
        self.probes = Counter(
            "rungway_probes_total",
            "Synthetic probes sent, by endpoint and outcome (ok, a failure class, unanswered, error).",
            ["endpoint", "outcome"],
            registry=None,
        )


_STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class BoardCollector(Collector):
    """The health board's view as gauges, read at scrape time (served by `rungway up`)."""

    def __init__(self, board: Board, wall: Callable[[], float]) -> None:
        self._board = board
        self._wall = wall

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._wall()
        snapshot = self._board.snapshot(now)
        state = GaugeMetricFamily(
            "rungway_circuit_state", "Circuit per rung endpoint: 0 closed, 1 half-open, 2 open.", labels=["endpoint"]
        )
        score = GaugeMetricFamily(
            "rungway_degradation_score",
            "Degradation score per rung endpoint (1 healthy, 0 unusable).",
            labels=["endpoint"],
        )
        p95 = GaugeMetricFamily(
            "rungway_latency_p95_seconds", "p95 latency over the score window.", labels=["endpoint"]
        )
        quota = GaugeMetricFamily(
            "rungway_quota_exhausted", "1 while a provider's rate limit says it has nothing left.", labels=["endpoint"]
        )
        for rung in snapshot["rungs"]:
            key = rung["endpoint"]
            state.add_metric([key], _STATE_VALUE.get(str(rung["circuit"]["state"]), 0.0))
            score.add_metric([key], float(rung["score"]))
            if rung["p95_s"] is not None:
                p95.add_metric([key], float(rung["p95_s"]))
            quota.add_metric([key], 1.0 if rung["quota_until"] else 0.0)
        budget = snapshot["retry_budget"]
        retries = GaugeMetricFamily(
            "rungway_retry_budget_used_ratio", "Extra tries over the fleet's allowance in the budget window."
        )
        retries.add_metric([], budget["retries"] / budget["allowed"] if budget["allowed"] else 0.0)
        yield from (state, score, p95, quota, retries)


class EnvoyRestarts(Collector):
    """How often `rungway up` had to restart Envoy, and the requests lost with it."""

    def __init__(self) -> None:
        self.count = 0
        self.lost = 0
        self.in_flight = 0  # Envoy's downstream requests in flight, as last seen
        self.last: dict[str, object] | None = None

    def note(self, exit_reason: str, at: float) -> int:
        lost = self.in_flight
        self.count += 1
        self.lost += lost
        self.in_flight = 0
        self.last = {"at": at, "exit": exit_reason, "requests_lost": lost}
        return lost

    def snapshot(self) -> dict[str, object]:
        return {"restarts": self.count, "requests_lost": self.lost, "last_restart": self.last}

    def collect(self) -> Iterator[CounterMetricFamily]:
        restarts = CounterMetricFamily("rungway_envoy_restarts", "Times rungway up had to restart a dead Envoy.")
        restarts.add_metric([], float(self.count))
        lost = CounterMetricFamily(
            "rungway_envoy_requests_lost", "Requests in flight at Envoy when it died (as last seen, once a second)."
        )
        lost.add_metric([], float(self.lost))
        yield from (restarts, lost)
