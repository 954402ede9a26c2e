"""The supervisor's pure pieces: how a probe's answer is labelled in rungway_probes_total."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from extproc.runtime.metrics import ProbeMetrics
from extproc.runtime.supervisor import probe_outcome


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (200, "none", "ok"),
        (200, None, "ok"),
        (503, "server_error", "server_error"),
        (429, "rate_limited", "rate_limited"),
        (502, "schema_error", "schema_error"),
        (503, None, "error"),  # Envoy's own answer: no Rungway reason
        (400, "<script>", "error"),  # never an unbounded label
    ],
)
def test_a_probes_outcome_is_ok_a_failure_class_or_error(status: int, reason: str | None, outcome: str) -> None:
    assert probe_outcome(status, reason) == outcome


def test_probes_are_counted_by_endpoint_and_outcome_in_their_own_series() -> None:
    metrics = ProbeMetrics()
    metrics.probes.labels("primary/gpt-4o", "server_error").inc()
    metrics.probes.labels("primary/gpt-4o", "server_error").inc()
    metrics.probes.labels("primary/gpt-4o", "ok").inc()
    registry = CollectorRegistry()
    registry.register(metrics.probes)
    text = generate_latest(registry).decode()
    assert 'rungway_probes_total{endpoint="primary/gpt-4o",outcome="server_error"} 2.0' in text
    assert 'rungway_probes_total{endpoint="primary/gpt-4o",outcome="ok"} 1.0' in text
    assert "tenant" not in text
