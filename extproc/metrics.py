"""Prometheus metrics (A3, first cut): what the processors observe, with bounded label sets.

Workers started by `rungway up` share one registry through prometheus-client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR), so the supervisor's /metrics shows the whole sidecar.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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
