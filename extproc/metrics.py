"""Prometheus metrics (A3, first cut): what the processors observe, with bounded label sets.

Workers started by `rungway up` share one registry through prometheus-client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR), so the supervisor's /metrics shows the whole sidecar.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self.sidecar_errors = Counter(
            "rungway_sidecar_errors_total",
            "Exceptions inside the sidecar that were answered with an error instead of a crash.",
            ["filter"],
            **kw,  # type: ignore[arg-type]
        )
        self.decide_seconds = Histogram(
            "rungway_decide_seconds",
            "Sidecar time spent deciding a request.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            **kw,  # type: ignore[arg-type]
        )
